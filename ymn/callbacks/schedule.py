"""When callbacks run: at the start (the pretrained baseline), every N steps, and at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


def due(step: int, every_n_steps: int) -> bool:
    """True on positive multiples of every_n_steps (0 or less: never)."""
    return every_n_steps > 0 and step > 0 and step % every_n_steps == 0


def wandb_loggers(trainer: L.Trainer) -> list[Any]:
    """The trainer's WandbLoggers (none if wandb is not configured)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class StepScheduledCallback(L.Callback):
    """Calls `run(trainer, module, step)` on a step schedule, once per step, on global rank 0."""

    def __init__(
        self, every_n_steps: int, at_start: bool, at_end: bool, out_dir: str | None
    ) -> None:
        super().__init__()
        self.every_n_steps = int(every_n_steps)
        self.at_start = at_start
        self.at_end = at_end
        self.out_dir = out_dir
        self._done: set[int] = set()

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> Any:
        raise NotImplementedError

    def run_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.out_dir or trainer.default_root_dir)

    def run_once(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> Any:
        if step in self._done or not trainer.is_global_zero:
            return None
        self._done.add(step)
        return self.run(trainer, pl_module, step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start:
            self.run_once(trainer, pl_module, trainer.global_step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if due(trainer.global_step, self.every_n_steps):
            self.run_once(trainer, pl_module, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self.run_once(trainer, pl_module, trainer.global_step)
