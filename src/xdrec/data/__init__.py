"""The data half of the pipeline: import, prepare (k-core, ids, splits), overlap, synthetic default."""
