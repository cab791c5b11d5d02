"""Reliability: atomic checkpoints, exact resume, fault handling and config validation."""
