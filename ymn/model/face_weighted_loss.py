"""Face-weighted diffusion loss: latent pixels inside face boxes count `factor` times as much.

kohya's `--masked_loss` and OneTrainer's masked training weight the loss by a mask; here the
mask is the face boxes of the metadata, already moved by the sample's crop and flip
(`ymn.data.buckets.transform_metadata`). Each image's weight map is normalised to mean 1, so
the loss scale (and the learning rate that suits it) does not depend on how much of the image
the faces cover, and an image without faces weighs as before.

Config: `model.face_loss_weight` (1.0: off, the recipe). An arm for the face-position and
bleeding studies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def face_mask(facepos: Sequence[Sequence[float]], height: int, width: int) -> torch.Tensor:
    """(height, width) float mask, 1 on latent pixels a face box (l, t, r, b fractions) touches."""
    mask = torch.zeros(height, width)
    for left, top, right, bottom in facepos:
        x0, y0 = max(0, math.floor(left * width)), max(0, math.floor(top * height))
        x1, y1 = min(width, math.ceil(right * width)), min(height, math.ceil(bottom * height))
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = 1.0
    return mask


def face_weight_maps(
    metas: Sequence[Mapping[str, Any]], height: int, width: int, factor: float
) -> torch.Tensor:
    """(B, 1, height, width) weights: `factor` inside faces, 1 outside, each map's mean 1."""
    if factor <= 0:
        raise ValueError(f"model.face_loss_weight={factor}: must be > 0 (1.0 turns it off)")
    maps = []
    for meta in metas:
        weights = 1.0 + (factor - 1.0) * face_mask(meta.get("facepos") or [], height, width)
        maps.append(weights / weights.mean())
    return torch.stack(maps).unsqueeze(1)
