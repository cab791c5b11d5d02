"""Numerical faults: a NaN or inf training loss is caught before it reaches the weights.

`faults.nan=skip` (default): the step returns no loss, so Lightning runs no backward and the
optimizer changes nothing; the count is logged as `train/nan_skipped`.
`faults.nan=stop`: save `checkpoints/nonfinite-step<N>.ckpt` (the state before the bad step)
and stop with a message naming the step and the batch keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

POLICIES = ("skip", "stop")


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN/inf and `faults.nan=stop`."""


@dataclass
class LossGuard:
    """Checks each training loss; built from the root `faults` node. `nan`: what a NaN/inf
    loss does, `skip` or `stop`."""

    nan: str = "skip"
    skipped: int = field(default=0, init=False)
    skipped_steps: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.nan not in POLICIES:
            raise ValueError(f"faults.nan={self.nan!r}: use one of {', '.join(POLICIES)}")

    def check(self, module: Any, loss: torch.Tensor, batch: Mapping[str, Any]) -> Any:
        """`loss` when finite; else None (skip) or raise NonFiniteLossError (stop)."""
        if bool(torch.isfinite(loss.detach()).all()):
            return loss
        step = int(module.global_step)
        keys = batch_keys(batch)
        if self.nan == "stop":
            saved = save_fault_checkpoint(module, step)
            raise NonFiniteLossError(
                f"training loss is {float(loss.detach())} at step {step} (batch keys: {keys}). "
                f"State before this step saved to {saved}. Check these samples, lower the "
                "learning rate or use faults.nan=skip; resume with ckpt_path=<that file>."
            )
        self.skipped += 1
        self.skipped_steps.append(step)
        log.warning(
            "non-finite loss at step %d (batch keys: %s): step skipped (%d so far)",
            step,
            keys,
            self.skipped,
        )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "skipped_steps": list(self.skipped_steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.skipped_steps = [int(s) for s in state.get("skipped_steps", [])]


def batch_keys(batch: Mapping[str, Any], limit: int = 16) -> list[str]:
    """The sample keys of a batch (at most `limit`), for messages."""
    keys = batch.get("keys") if isinstance(batch, Mapping) else None
    return [str(k) for k in list(keys or [])[:limit]]


def save_fault_checkpoint(module: Any, step: int) -> Path | None:
    """Save the trainer state to `<run>/checkpoints/nonfinite-step<N>.ckpt`; None if no trainer."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return None
    folder = Path(trainer.default_root_dir) / "checkpoints"
    path = folder / f"nonfinite-step{step:07d}.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    return path
