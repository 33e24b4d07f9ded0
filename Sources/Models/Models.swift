// Placeholder until the models land (issue #3).
