"""Validation loss split by concept: per top-level category and per number of people.

EveryDream2 reports validation loss per subject; here each held-out sample's loss also counts
towards `val/loss/<category>` (the first folder of its ASP category, e.g. `screenshots`,
`fanart`, `regularization`, `hands`) and `val/loss/n<k>` (k people in the scene). Sums are
gathered over every rank before the means are taken, so DDP runs report the full split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist


def sample_groups(meta: Mapping[str, Any]) -> list[str]:
    """The groups a sample's loss counts towards (none when its metadata says nothing)."""
    groups = []
    category = str(meta.get("category") or "")
    if category and category != ".":
        groups.append(category.split("/")[0])
    n_people = meta.get("n_people")
    if isinstance(n_people, int) and not isinstance(n_people, bool):
        groups.append(f"n{n_people}")
    return groups


class GroupedLoss:
    """Running (sum, count) of per-sample losses per group over one validation epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def reset(self) -> None:
        self.sums.clear()

    def add(self, metas: Sequence[Mapping[str, Any]] | None, losses: torch.Tensor) -> None:
        """Count each sample's loss towards its groups (batches without metadata add nothing)."""
        if not metas:
            return
        for meta, loss in zip(metas, losses.detach().float().cpu().tolist(), strict=True):
            for group in sample_groups(meta):
                self.sums[group][0] += loss
                self.sums[group][1] += 1.0

    def means(self) -> dict[str, float]:
        """Mean loss per group, over all ranks when running distributed."""
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for part in self._gathered():
            for group, (total, count) in part.items():
                totals[group][0] += total
                totals[group][1] += count
        return {group: total / count for group, (total, count) in sorted(totals.items()) if count}

    def _gathered(self) -> list[dict[str, list[float]]]:
        local = dict(self.sums)
        if not (dist.is_available() and dist.is_initialized()):
            return [local]
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        return parts
