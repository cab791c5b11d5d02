"""When callbacks run: at the start (the pretrained baseline), every N steps, and at the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def on_device(module: L.LightningModule, device: Any) -> Iterator[None]:
    """The module on `device` for the block, then back where it was (after fit, the strategy
    has moved it to the CPU)."""
    first = next(module.parameters(), None)
    home = first.device if first is not None else device
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


class StepScheduledCallback(L.Callback):
    """Calls `run(trainer, module, step)` on a step schedule, once per step, on global rank 0.

    Subclasses name the file a pass at `step` writes (`output_path`): a run resumed from its
    final checkpoint uses it to write a missing end pass and to keep one written before.
    """

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

    def output_path(self, trainer: L.Trainer, step: int) -> Path:
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

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run resumed from its final checkpoint (killed during its end pass) skips the
        training loop and with it on_train_end: its end pass runs here, unless written before."""
        step = trainer.global_step
        if not (self.at_end and trainer.is_global_zero) or step in self._done:
            return
        if self.output_path(trainer, step).is_file():
            return
        with on_device(pl_module, trainer.strategy.root_device):
            self.run_once(trainer, pl_module, step)
