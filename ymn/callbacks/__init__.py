"""Callbacks: when to sample and when to probe."""
