"""The batch contract: what a training or validation batch holds, from any data module.

Built by `ymn.data.stream.make_batch` (pixels) and the cached-latent source; read by the
LightningModule, the auxiliary losses, the probes and the fault guards. A batch carries either
`pixel_values` or `latents` (already scaled), always `captions`, `keys` and `meta`, and
`input_ids` when the loader tokenized the captions. `skipped` and `slot` ride only from a
DataLoader worker to the data module, which removes them before the batch reaches the model.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch


class Batch(TypedDict, total=False):
    """One bucket's samples (every list has one entry per sample)."""

    pixel_values: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    latents: torch.Tensor  # (B, 4, h, w), scaled by the VAE's scaling_factor
    captions: list[str]  # as built for this draw (dropout, shuffle applied)
    keys: list[str]  # sample keys of the shards
    meta: list[dict[str, Any]]  # normalised ASP metadata after crop and flip (facepos moved)
    input_ids: torch.Tensor  # (B, 77) CLIP token ids of the captions
    skipped: dict[str, int]  # worker → data module only: bad-input counts of that worker
    slot: int  # worker → data module only: which worker slot counted them
