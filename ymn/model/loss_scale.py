"""Per-category loss weight, apart from the sampling weight (EveryDream2 `loss_scale.txt`,
OneTrainer's concept `loss_weight`).

A sample's weight: the data config's `data.loss_scale` entry for its category (the deepest
named folder, as `data.prepare.tree` names them) when there is one, else the `loss_scale` its
shard metadata carries (a `loss_scale.txt` in its source folder, packed by `ymn-pack`), else 1.
The per-sample diffusion loss is multiplied by it before the batch mean, as ED2 does: a
weight-0 sample gives no gradient, the others keep their 1/B share. Only when some weight in
the batch is not 1: `train/loss_scale` (the batch's mean weight) and `train/loss/<category>`
(the weighted loss of the batch's samples of each top-level category) are logged. With every
weight 1 the loss is today's `mean()`, bit for bit. Validation loss is never weighted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ymn.data.loss_scales import category_loss_scale


def sample_loss_scales(
    metas: Sequence[Mapping[str, Any]] | None, tree: Mapping[str, float] | None = None
) -> list[float] | None:
    """Each sample's loss weight, or None when all are 1 (or the batch has no metadata)."""
    if not metas:
        return None
    scales = []
    for meta in metas:
        value = category_loss_scale(str(meta.get("category") or ""), tree) if tree else None
        scales.append(float(meta.get("loss_scale", 1.0) if value is None else value))
    return None if all(scale == 1.0 for scale in scales) else scales


def _config_tree(module: Any) -> Mapping[str, float] | None:
    try:
        datamodule = getattr(module.trainer, "datamodule", None)
    except RuntimeError:  # not attached to a Trainer (direct calls in tests)
        return None
    return getattr(datamodule, "loss_scale", None)


def weighted_mean(module: Any, batch: Mapping[str, Any], per_sample: torch.Tensor) -> torch.Tensor:
    """The batch's training loss: per-sample losses times their weights, averaged."""
    metas = batch.get("meta")
    scales = sample_loss_scales(metas, _config_tree(module))
    if scales is None:
        return per_sample.mean()
    weights = torch.tensor(scales, device=per_sample.device, dtype=per_sample.dtype)
    weighted = per_sample * weights
    module.log("train/loss_scale", weights.mean(), batch_size=len(scales))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, meta in enumerate(metas):
        category = str(meta.get("category") or "")
        groups[category.split("/")[0] if category not in ("", ".") else "root"].append(i)
    for name, index in sorted(groups.items()):
        value = weighted[index].mean().detach()
        module.log(f"train/loss/{name}", value, batch_size=len(index))
    return weighted.mean()
