"""Instrument validation of the probes: positive / negative controls, VAE ceiling, robustness."""
