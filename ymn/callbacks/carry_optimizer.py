"""Phase chaining with `carry_optimizer=true`: load the previous phase's AdamW state.

ED1's phase 2 started with a fresh optimizer (its resume loaded weights only); this callback is
the option to carry the optimizer instead, for the ablation that asks whether it matters.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer

from ymn.run_dir import checkpoint_folder, latest_checkpoint

log = logging.getLogger(__name__)


def previous_phase_checkpoint(init_from: str | Path) -> Path:
    """The resumable checkpoint of a previous run directory (`ymn.run_dir`)."""
    path = latest_checkpoint(init_from)
    if path is None:
        raise FileNotFoundError(
            f"carry_optimizer=true needs a checkpoint in {checkpoint_folder(init_from)}: "
            "init_from must be a ymn run directory whose last.ckpt or step*.ckpt holds the "
            "optimizer state (an exported model has none)."
        )
    return path


class CarryOptimizerState(Callback):
    """Loads the optimizer state of `checkpoint` into the fresh optimizer at the start of fit."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = Path(checkpoint)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        for optimizer, saved in zip(trainer.optimizers, state["optimizer_states"], strict=True):
            optimizer.load_state_dict(saved)
        log.info("Carried the optimizer state of %s", self.checkpoint)
