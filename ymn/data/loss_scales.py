"""Per-category loss weights, apart from sampling weights (EveryDream2 `loss_scale.txt`,
OneTrainer's concept `loss_weight`): read from a folder at pack time, or from `data.loss_scale`
(folder → weight) in the data config. The training loss applies them (ymn.model.loss_scale)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ymn.data.multiply import read_number_file

LOSS_SCALE_FILE = "loss_scale.txt"


def read_loss_scale_txt(folder: Path) -> float | None:
    """The number in `folder/loss_scale.txt` (ED2: the folder's loss weight, not inherited by
    sub-folders, like multiply.txt), or None when the folder has none."""
    return read_number_file(folder, LOSS_SCALE_FILE, "a loss scale", "0.5")


def loss_scale_meta(folder: Path) -> dict[str, float]:
    """`{"loss_scale": x}` for a sample's metadata when its folder has a loss_scale.txt, else
    nothing (shards packed without one stay byte-identical)."""
    value = read_loss_scale_txt(folder)
    return {} if value is None else {"loss_scale": value}


def category_loss_scale(category: str, tree: Mapping[str, float]) -> float | None:
    """The loss scale the data config gives `category`: the entry of its deepest named folder
    (`{"regularization": 0.5, "regularization/hands": 2}`: hands 2, the rest 0.5), or None."""
    parts = category.strip("/").split("/")
    for depth in range(len(parts), 0, -1):
        value = tree.get("/".join(parts[:depth]))
        if value is not None:
            return float(value)
    return None


def check_loss_scale_tree(tree: Mapping[str, Any] | None) -> dict[str, float]:
    """`data.loss_scale` as {folder: weight >= 0}, failing with the key at fault."""
    checked = {}
    for key, value in (tree or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"data.loss_scale.{key}={value!r}: use a number >= 0")
        checked[str(key).strip("/")] = float(value)
    return checked
