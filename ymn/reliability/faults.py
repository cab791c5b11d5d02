"""Numerical faults: a NaN or inf training loss is caught before it reaches the weights.

`faults.nan=skip` (default): the step returns no loss, so Lightning runs no backward and the
optimizer changes nothing; the count is logged as `train/nan_skipped`.
`faults.nan=stop`: save `checkpoints/nonfinite-step<N>.ckpt` (the state before the bad step)
and stop with a message naming the step and the batch keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ymn.data.batch import Batch

log = logging.getLogger(__name__)

POLICIES = ("skip", "stop")


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN/inf and `faults.nan=stop`."""


@dataclass
class LossGuard:
    """Checks each training loss. `inject_nan_at_steps` is a TEST HOOK: it replaces the loss of
    those global steps by NaN so tests can exercise the fault path; leave it empty."""

    policy: str = "skip"
    inject_nan_at_steps: tuple[int, ...] = ()
    skipped: int = 0
    skipped_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"faults.nan={self.policy!r}: use one of {', '.join(POLICIES)}")
        self.inject_nan_at_steps = tuple(int(s) for s in self.inject_nan_at_steps or ())

    def check(self, module: Any, loss: torch.Tensor, batch: Batch) -> Any:
        """`loss` when finite; else None (skip) or raise NonFiniteLossError (stop)."""
        step = int(module.global_step)
        if step in self.inject_nan_at_steps:  # TEST HOOK
            loss = loss * float("nan")
        if bool(torch.isfinite(loss.detach()).all()):
            return loss
        keys = batch_keys(batch)
        if self.policy == "stop":
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


def batch_keys(batch: Batch, limit: int = 16) -> list[str]:
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


def loss_guard_from_config(cfg: Mapping[str, Any] | None) -> LossGuard:
    """A LossGuard from the root `faults` config (`nan`, `inject_nan_at_step`)."""
    cfg = dict(cfg or {})
    inject = cfg.get("inject_nan_at_step")
    steps: Iterable[int] = () if inject is None else (inject if _is_seq(inject) else [inject])
    return LossGuard(policy=str(cfg.get("nan", "skip")), inject_nan_at_steps=tuple(steps))


def _is_seq(value: Any) -> bool:
    return isinstance(value, list | tuple) or (
        hasattr(value, "__iter__") and not isinstance(value, str | bytes)
    )
