"""Remedies for the card's three failures (issue 8), each switchable from one config key.

- `attn_localization`: a FastComposer-style cross-attention localization loss (`loss=...`).
- `control_tokens`: dedicated tokenizer entries for the count and face-grid tokens.
- `noise_prior`: count-aware initial latent noise at sampling (`probes.noise_prior`).
"""
