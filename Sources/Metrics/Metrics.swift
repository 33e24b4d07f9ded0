// Placeholder until the metrics land (issue #3).
