"""How large a run's checkpoints are, and whether the run directory's disk can hold one.

At SD 1.5 scale one full checkpoint is ~12.1 GB: 4.3 GB of fp32 weights (UNet, VAE, text encoder)
and 7.9 GB of AdamW moments for the 0.98 B trained parameters. `RunCheckpoint` logs the estimate
at start and refuses to start when the disk cannot take one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

BEST_FORMATS = ("full", "weights", "weights_fp16")


class CheckpointDiskError(OSError):
    """The run directory's disk cannot hold one checkpoint."""


@dataclass(frozen=True)
class CheckpointSize:
    """Bytes of the parts of one checkpoint (tensor payload; pickle overhead is small)."""

    weights: int  # the LightningModule's state_dict
    optimizer: int  # optimizer moments of the trained parameters
    ema: int  # EMA shadow of the UNet, when kept
    weights_fp16: int  # weights + EMA with floating tensors in float16

    @property
    def full(self) -> int:
        """A resumable checkpoint: step*.ckpt, last.ckpt's target, best.ckpt with format full."""
        return self.weights + self.optimizer + self.ema

    def best(self, best_format: str) -> int:
        """The bytes of best.ckpt written in `best_format` (one of BEST_FORMATS)."""
        return {
            "full": self.full,
            "weights": self.weights + self.ema,
            "weights_fp16": self.weights_fp16,
        }[best_format]


def tensor_bytes(tensors: Iterable[torch.Tensor], half: bool = False) -> int:
    """Bytes of `tensors`; with `half`, floating tensors counted at 2 bytes an element."""
    total = 0
    for t in tensors:
        size = 2 if half and t.is_floating_point() else t.element_size()
        total += t.numel() * size
    return total


def optimizer_moments(optimizer: torch.optim.Optimizer) -> int:
    """State tensors kept per parameter: 2 for Adam-like (betas), 1 with momentum, else 0."""
    defaults = optimizer.defaults
    if "betas" in defaults:
        return 2
    return 1 if defaults.get("momentum") else 0


def estimate_checkpoint(
    module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]
) -> CheckpointSize:
    """The size of one checkpoint of `module` trained by `optimizers` (before their first step,
    when their state is still empty)."""
    state = list(module.state_dict().values())
    ema = getattr(module, "ema", None)
    shadow = list(ema.shadow_params) if ema is not None else []
    moments = 0
    for optimizer in optimizers:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        moments += optimizer_moments(optimizer) * tensor_bytes(params)
    return CheckpointSize(
        weights=tensor_bytes(state),
        optimizer=moments,
        ema=tensor_bytes(shadow),
        weights_fp16=tensor_bytes(state, half=True) + tensor_bytes(shadow, half=True),
    )


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def describe_checkpoints(size: CheckpointSize, keep_last: int, best_format: str) -> str:
    """One line: the size of one checkpoint and the most that keep_last + best.ckpt hold."""
    best = size.best(best_format)
    best_note = (
        "a hard link to the step checkpoint of its step when that one is kept, else its own file"
        if best_format == "full"
        else f"{best_format}"
    )
    most = keep_last * size.full + best
    return (
        f"one checkpoint is {gb(size.full)} (weights {gb(size.weights)}, optimizer "
        f"{gb(size.optimizer)}, EMA {gb(size.ema)}); keep_last={keep_last} holds up to "
        f"{keep_last} x {gb(size.full)} + best.ckpt {gb(best)} ({best_note}) = {gb(most)}, "
        f"plus one more while a save is being written; last.ckpt is a link"
    )


def check_disk(
    folder: Path, size: CheckpointSize, keep_last: int, best_format: str
) -> tuple[str, bool]:
    """The start-up report for `folder` and whether its disk holds all that keep_last keeps;
    raises CheckpointDiskError when not even one checkpoint fits."""
    free = free_bytes(folder)
    report = f"checkpoints in {folder}: {describe_checkpoints(size, keep_last, best_format)}"
    report += f"; {gb(free)} free there"
    fits_all = free >= keep_last * size.full + size.best(best_format) + size.full
    if free < size.full:
        raise CheckpointDiskError(
            f"{folder}: its disk has {gb(free)} free but one checkpoint needs {gb(size.full)} "
            f"(weights {gb(size.weights)} + optimizer {gb(size.optimizer)} + EMA "
            f"{gb(size.ema)}). Free space there, or point paths.run_dir (or "
            "callbacks.checkpoint.dirpath) at a disk with room; not starting."
        )
    if not fits_all:
        report += (
            " - NOT enough for all of them: free space, or lower callbacks.checkpoint.keep_last"
            " or set callbacks.checkpoint.best_format=weights_fp16"
        )
    return report, fits_all
