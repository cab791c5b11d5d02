"""Experiments and benchmarks (not part of the installed package)."""
