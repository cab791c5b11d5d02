"""Data: weights, metadata, captions, synthetic scenes, shards, the weighted stream."""
