"""Checkpoints a 40,000-step run can trust.

- `AtomicCheckpointIO`: every checkpoint is written to a temporary file in the same folder,
  fsynced, then renamed over the target, so a kill during a save leaves the previous file whole.
- `RunCheckpoint`: a step checkpoint every N steps keeping the last K (`step0000500.ckpt`...),
  `last.ckpt` pointing at the newest, `best.ckpt` by `best_monitor` (`val/loss`, or a probe
  reading such as `probe/identity/drawn/n1`, set after the batch and read when validation
  ends), a final one at the end of training, and one when SIGTERM/SIGINT stops the run
  (Lightning turns SIGTERM into a `SIGTERMException` at the end of the current batch; we route
  SIGINT the same way).
- `ResumeState`: fixes up the data-stream position recorded in a checkpoint saved from
  `on_train_batch_end` (Lightning has not yet counted that batch as completed).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any
from weakref import proxy

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ymn.reliability.checkpoint_size import BEST_FORMATS, check_disk, estimate_checkpoint

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


def atomic_hard_link(source: Path, target: Path) -> None:
    """`target` becomes a second name of `source` (no bytes copied), replacing any old target."""
    tmp = target.with_name(f"{TMP_PREFIX}{target.name}-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(
            f"Could not hard-link {target} to {source} ({error}); checkpoints are stored once "
            "per step through hard links, so callbacks.checkpoint.dirpath must be on a local "
            "filesystem that supports them."
        ) from error
    _fsync_dir(target.parent)


def _to_fp16(value: Any) -> Any:
    """`value` with every floating tensor (nested in dicts and lists) cast to float16."""
    if isinstance(value, torch.Tensor):
        return value.half() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_fp16(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_fp16(v) for v in value)
    return value


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files a killed save left behind; returns what was removed."""
    stale = sorted(Path(folder).glob(f"{TMP_PREFIX}*")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunCheckpoint(ModelCheckpoint):
    """Last `keep_last` step checkpoints every `every_n_train_steps`, `last.ckpt`, `best.ckpt`
    by `best_monitor`, one at the end of training and one on SIGTERM/SIGINT.

    A step is stored once: a second name for a step already on disk (best.ckpt and that step's
    step*.ckpt, in either order) is a hard link. `best_format`: `full` (resumable), `weights`
    (module weights + EMA, no optimizer) or `weights_fp16` (the same in float16). At start the
    size of one checkpoint is logged, and a disk that cannot hold one stops the run.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_train_steps: int = 500,
        keep_last: int = 3,
        best_monitor: str | None = "val/loss",
        best_mode: str = "min",
        save_on_signal: bool = True,
        save_on_train_end: bool = True,
        best_format: str = "full",
        verbose: bool = False,
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"callbacks.checkpoint.keep_last={keep_last}: keep at least 1")
        if best_format not in BEST_FORMATS:
            raise ValueError(
                f"callbacks.checkpoint.best_format={best_format!r}: use one of {BEST_FORMATS}"
            )
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
        self.best_format = best_format
        self._full_on_disk: tuple[int, str] | None = None  # (step, path) of the newest full save
        self._previous_sigint: Any = None

    # -- best by best_monitor ----------------------------------------------------------------
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
            if self.best_format != "full":
                self._save_weights(trainer, self.best_val_path, self.best_format == "weights_fp16")
            elif not self._link_same_step(trainer, self.best_val_path):
                trainer.save_checkpoint(self.best_val_path, weights_only=False)
                self._full_on_disk = (trainer.global_step, self.best_val_path)
            log.info(
                "best %s=%.5f at step %d -> %s",
                self.best_monitor,
                current,
                trainer.global_step,
                self.best_val_path,
            )

    # -- one copy per step --------------------------------------------------------------------
    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        """Lightning's save of step*.ckpt (and a non-linked last.ckpt), deduplicated."""
        if not self._link_same_step(trainer, filepath):
            super()._save_checkpoint(trainer, filepath)
            self._full_on_disk = (trainer.global_step, filepath)
            return
        self._last_global_step_saved = trainer.global_step  # what the parent's save records
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _link_same_step(self, trainer: Trainer, filepath: str) -> bool:
        """Hard-link `filepath` to the full checkpoint already written at this step, if any."""
        saved = self._full_on_disk
        if saved is None or saved[0] != trainer.global_step or saved[1] == filepath:
            return False
        if trainer.is_global_zero:
            atomic_hard_link(Path(saved[1]), Path(filepath))
        trainer.strategy.barrier()
        return True

    def _save_weights(self, trainer: Trainer, filepath: str, fp16: bool) -> None:
        """A weights-only checkpoint (state_dict, EMA, step), optionally in float16."""
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=True)
        if fp16:
            checkpoint = _to_fp16(checkpoint)
        if trainer.is_global_zero:
            atomic_torch_save(checkpoint, Path(filepath))
        trainer.strategy.barrier()

    @staticmethod
    def _link_checkpoint(trainer: Trainer, filepath: str, linkpath: str) -> None:
        """last.ckpt as Lightning links it, but a hard link (never a copy) where symlinks fail."""
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.lexists(linkpath):
                os.remove(linkpath)
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), linkpath)
            except OSError:
                atomic_hard_link(Path(filepath), Path(linkpath))
        trainer.strategy.barrier()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the size of one checkpoint and what keep_last holds; stop if one does not fit."""
        super().on_fit_start(trainer, pl_module)
        if not self.dirpath or not self._may_save(trainer):
            return
        size = estimate_checkpoint(pl_module, trainer.optimizers)
        report, fits_all = check_disk(Path(self.dirpath), size, self.save_top_k, self.best_format)
        if trainer.is_global_zero:
            (log.info if fits_all else log.warning)(report)

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
    a checkpoint is written from `on_train_batch_end`, and the module's training seed. Between
    epochs (e.g. the save at the end of training) the next epoch has consumed none: the batch
    counter still holds the finished epoch's count there."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        datamodule = trainer.datamodule
        key = type(datamodule).__qualname__ if datamodule is not None else None
        if key and isinstance(checkpoint.get(key), dict) and "batches_consumed" in checkpoint[key]:
            epochs = trainer.fit_loop.epoch_progress.current
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            in_epoch = epochs.started > epochs.completed
            checkpoint[key]["batches_consumed"] = int(progress.processed) if in_epoch else 0
