"""Streaming multi-rank data loading from WebDataset shards: config, shard plan, safe decoding, resumable loader."""
