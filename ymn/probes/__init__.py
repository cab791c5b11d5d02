"""Probes: count, face-grid, attention and linear probes."""
