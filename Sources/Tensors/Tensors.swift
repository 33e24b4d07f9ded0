// Placeholder until the tensors land (issue #3).
