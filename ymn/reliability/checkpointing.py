"""Checkpoints a 40,000-step run can trust.

- `AtomicCheckpointIO`: every checkpoint is written to a temporary file in the same folder,
  fsynced, then renamed over the target, so a kill during a save leaves the previous file whole.
- `RunCheckpoint`: a step checkpoint every N steps keeping the last K (`step0000500.ckpt`...),
  `last.ckpt` pointing at the newest, `best.ckpt` by `val/loss`, a final one at the end of
  training, and one when SIGTERM/SIGINT stops the run (Lightning turns SIGTERM into a
  `SIGTERMException` at the end of the current batch; we route SIGINT the same way).
- `ResumeState`: fixes up the data-stream position recorded in a checkpoint saved from
  `on_train_batch_end` (Lightning has not yet counted that batch as completed).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to `.tmp-<name>-<pid>` beside the target, fsync, `os.replace`, fsync dir."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write `checkpoint` to `path` atomically (all or nothing)."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save(obj, path)` such that `path` is either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files a killed save left behind; returns what was removed."""
    stale = sorted(Path(folder).glob(f"{TMP_PREFIX}*")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunCheckpoint(ModelCheckpoint):
    """Last `keep_last` step checkpoints every `every_n_train_steps`, `last.ckpt`, `best.ckpt`
    by `best_monitor`, one at the end of training and one on SIGTERM/SIGINT."""

    def __init__(
        self,
        dirpath: str,
        every_n_train_steps: int = 500,
        keep_last: int = 3,
        best_monitor: str | None = "val/loss",
        best_mode: str = "min",
        save_on_signal: bool = True,
        save_on_train_end: bool = True,
        verbose: bool = False,
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"callbacks.checkpoint.keep_last={keep_last}: keep at least 1")
        if best_mode not in ("min", "max"):
            raise ValueError(f"callbacks.checkpoint.best_mode={best_mode!r}: use min or max")
        super().__init__(
            dirpath=dirpath,
            filename="step{step:07d}",
            monitor="step",
            mode="max",
            save_top_k=keep_last,
            save_last="link",
            every_n_train_steps=every_n_train_steps,
            auto_insert_metric_name=False,
            verbose=verbose,
        )
        self.best_monitor, self.best_mode = best_monitor, best_mode
        self.save_on_signal, self.save_on_train_end = save_on_signal, save_on_train_end
        self.best_val_score: float | None = None
        self.best_val_path = ""
        self._previous_sigint: Any = None

    # -- best by val/loss --------------------------------------------------------------------
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.best_monitor and self._may_save(trainer):
            self._save_if_best(trainer)

    def _may_save(self, trainer: Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return (
            trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and not bool(trainer.fast_dev_run)
        )

    def _save_if_best(self, trainer: Trainer) -> None:
        value = trainer.callback_metrics.get(self.best_monitor)
        if value is None:
            return
        current = float(value)
        if current != current:  # NaN is never best
            return
        better = (
            self.best_val_score is None
            or (self.best_mode == "min" and current < self.best_val_score)
            or (self.best_mode == "max" and current > self.best_val_score)
        )
        if better:
            self.best_val_score = current
            self.best_val_path = str(Path(self.dirpath) / "best.ckpt")
            trainer.save_checkpoint(self.best_val_path, weights_only=False)
            log.info(
                "best %s=%.5f at step %d -> %s",
                self.best_monitor,
                current,
                trainer.global_step,
                self.best_val_path,
            )

    # -- end of training and signals -----------------------------------------------------------
    def save_now(self, trainer: Trainer, why: str) -> None:
        """A step checkpoint (and `last.ckpt`) for the current state, unless one exists."""
        if self._last_global_step_saved == trainer.global_step or not self._may_save(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        log.info("checkpoint at step %d (%s): %s", trainer.global_step, why, self.last_model_path)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.dirpath:
            remove_stale_temps(Path(self.dirpath))
        if self.save_on_signal and trainer.is_global_zero:
            self._install_sigint(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_on_train_end:
            self.save_now(trainer, "end of training")
        self._restore_sigint()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()
        if self.save_on_signal and isinstance(exception, SIGTERMException | KeyboardInterrupt):
            self.save_now(trainer, f"stopped by {type(exception).__name__}")
            log.warning(
                "Stopped at step %d; resume with ckpt_path=%s",
                trainer.global_step,
                Path(self.dirpath).parent,
            )

    def _install_sigint(self, trainer: Trainer) -> None:
        """First Ctrl+C: finish this batch, save, exit (like SIGTERM). Second: abort now."""

        def graceful(signum: int, frame: Any) -> None:
            log.warning("SIGINT: saving a checkpoint after this batch (Ctrl+C again aborts)")
            trainer._signal_connector.received_sigterm = True
            signal.signal(signal.SIGINT, signal.default_int_handler)

        try:
            self._previous_sigint = signal.signal(signal.SIGINT, graceful)
        except ValueError:  # not the main thread
            self._previous_sigint = None

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            try:
                signal.signal(signal.SIGINT, self._previous_sigint)
            except ValueError:
                pass
            self._previous_sigint = None

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(best_val_score=self.best_val_score, best_val_path=self.best_val_path)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_val_score = state_dict.get("best_val_score")
        self.best_val_path = state_dict.get("best_val_path", "")


class ResumeState(Callback):
    """Records how many batches of the epoch were consumed *including* one being finished when
    a checkpoint is written from `on_train_batch_end`, and the module's training seed."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        datamodule = trainer.datamodule
        key = type(datamodule).__qualname__ if datamodule is not None else None
        if key and isinstance(checkpoint.get(key), dict) and "batches_consumed" in checkpoint[key]:
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            checkpoint[key]["batches_consumed"] = int(progress.processed)
