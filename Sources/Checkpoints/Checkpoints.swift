// Placeholder until checkpoints land (issue #5).
