// Placeholder until the importer lands (issue #4).
print("clm-data: not yet implemented")
