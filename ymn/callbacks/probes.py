"""ProbeCallback: run a probe pass (ymn.probes.runner) on a schedule and log its metrics.

At the start (the pretrained baseline), every N steps and at the end, on global rank 0 only:
metrics go to every logger and into `trainer.callback_metrics` (so sweeps can optimise a probe
metric); the confusion matrix goes to wandb as an image and a table when wandb is present.
Held-out batches are the first few of the data module's val loader, read once and cached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ymn.callbacks.schedule import StepScheduledCallback, wandb_loggers
from ymn.config_values import plain
from ymn.probes.prompts import build_probe_prompts
from ymn.probes.runner import ProbeConfig, probe_paths, run_probe_pass

log = logging.getLogger(__name__)
HELDOUT_KEYS = ("pixel_values", "latents", "meta", "captions")


class ProbeCallback(StepScheduledCallback):
    """Count, face-grid, attention and linear probes on a schedule.

    detector: "synthetic", "animeface", "package.module:Class", or a detector object.
    counts/layouts/seeds/characters/general: the probe prompt set (ymn.probes.prompts).
    heldout_batches: how many val batches feed the teacher-forced attention and linear probes.
    settings: the ProbeConfig fields (steps, guidance_scale, size, timesteps, ...).
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        at_start: bool = True,
        at_end: bool = True,
        detector: Any = "synthetic",
        detector_kwargs: dict[str, Any] | None = None,
        counts: Sequence[int | str] = (1, 2, 3, 4, 5, "many"),
        layouts: Sequence[str] = ("row", "scatter"),
        seeds: Sequence[int] = (0, 1),
        characters: Sequence[str] | None = None,
        general: str | None = None,
        heldout_batches: int = 4,
        out_dir: str | None = None,
        caption: Any = None,
        **settings: Any,
    ) -> None:
        super().__init__(every_n_steps, at_start, at_end, out_dir)
        self.n_heldout = int(heldout_batches)
        try:
            self.cfg = ProbeConfig(
                caption=plain(caption), **{k: plain(v) for k, v in settings.items()}
            )
        except TypeError as err:
            raise TypeError(f"probes: unknown probe setting ({err}); see ProbeConfig") from err
        self.prompts = build_probe_prompts(
            self.cfg.caption,
            counts=plain(counts),
            layouts=plain(layouts),
            seeds=plain(seeds),
            characters=plain(characters),
            general=general,
        )
        self._detector_spec = plain(detector)
        self._detector_kwargs = plain(detector_kwargs) or {}
        self._detector: Any = None
        self._heldout: list[dict[str, Any]] | None = None

    # -- inputs ------------------------------------------------------------------------------
    @property
    def detector(self) -> Any:
        if self._detector is None:
            if isinstance(self._detector_spec, str):
                from ymn.probes.detectors import load_detector

                self._detector = load_detector(self._detector_spec, **self._detector_kwargs)
            else:
                self._detector = self._detector_spec
        return self._detector

    def heldout(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        """The first `heldout_batches` val batches (only the keys probes read), cached."""
        if self._heldout is not None:
            return self._heldout
        self._heldout = []
        datamodule = getattr(trainer, "datamodule", None)
        if self.n_heldout <= 0 or datamodule is None or not hasattr(datamodule, "val_dataloader"):
            log.warning("Probes: no val_dataloader; teacher-forced and linear probes are skipped")
            return self._heldout
        for batch in datamodule.val_dataloader():
            self._heldout.append({k: batch[k] for k in HELDOUT_KEYS if k in batch})
            if len(self._heldout) >= self.n_heldout:
                break
        return self._heldout

    # -- work --------------------------------------------------------------------------------
    def probe(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: int
    ) -> dict[str, float] | None:
        """One probe pass at `step` (once per step, on global rank 0); logs and returns metrics."""
        return self.run_once(trainer, pl_module, step)

    def run(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: int
    ) -> dict[str, float] | None:
        metrics = run_probe_pass(
            pl_module,
            step=step,
            out_dir=self.run_dir(trainer),
            detector=self.detector,
            prompts=self.prompts,
            heldout_batches=self.heldout(trainer),
            cfg=self.cfg,
        )
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        self._log(trainer, metrics, step)
        return metrics

    def _log(self, trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            try:
                logger.log_metrics(metrics, step=step)
                logger.save()
            except Exception as error:  # logging must never stop training
                log.warning("Could not log probe metrics to %s: %s", type(logger).__name__, error)
        json_path, png_path = probe_paths(self.run_dir(trainer), step)
        for logger in wandb_loggers(trainer):
            try:
                if png_path.is_file():
                    logger.log_image(key="probe/confusion", images=[str(png_path)], step=step)
                self._log_table(logger, json_path, step)
            except Exception as error:
                log.warning("Could not log the probe confusion matrix to wandb: %s", error)

    @staticmethod
    def _log_table(logger: Any, json_path: Path, step: int) -> None:

        report = json.loads(json_path.read_text())
        confusion = report.get("count", {}).get("confusion")
        if not confusion:
            return
        labels = [str(v) for v in confusion["labels"]]
        rows = [[label, *row] for label, row in zip(labels, confusion["matrix"], strict=True)]
        logger.log_table(
            key="probe/confusion_table", columns=["requested", *labels], data=rows, step=step
        )
