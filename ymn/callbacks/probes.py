"""ProbeCallback: run a probe pass (ymn.probes.runner) on a schedule and log its metrics.

At the start (the pretrained baseline), every N steps and at the end, on global rank 0 only:
metrics go to every logger and into `trainer.callback_metrics` (so sweeps can optimise a probe
metric); the confusion matrix goes to wandb as an image and a table when wandb is present.
Held-out batches are the first few of the data module's val loader, read once and cached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ymn.callbacks.schedule import StepScheduledCallback, wandb_loggers
from ymn.model.export import ema_weights
from ymn.probes.config import ProbeConfig, probe_config
from ymn.probes.prompts import config_prompts
from ymn.probes.runner import run_probe_pass
from ymn.run_dir import probe_paths

log = logging.getLogger(__name__)
HELDOUT_KEYS = ("pixel_values", "latents", "meta", "captions")


class ProbeCallback(StepScheduledCallback):
    """Count, face-grid, identity, attention and linear probes on a schedule.

    config: every setting (schedule, detector, prompt set, sampler, probes), a ProbeConfig
    built from the `probes` group (or a mapping of its fields). out_dir: the run directory.
    """

    def __init__(
        self, config: ProbeConfig | Mapping[str, Any] | None = None, out_dir: str | None = None
    ) -> None:
        cfg = probe_config(config)
        super().__init__(cfg.every_n_steps, cfg.at_start, cfg.at_end, out_dir)
        self.cfg = cfg
        self.prompts = config_prompts(cfg)
        self._detector: Any = None
        self._heldout: list[dict[str, Any]] | None = None

    # -- inputs ------------------------------------------------------------------------------
    @property
    def detector(self) -> Any:
        if self._detector is None:
            if isinstance(self.cfg.detector, str):
                from ymn.probes.detectors import load_detector

                self._detector = load_detector(self.cfg.detector, **self.cfg.detector_kwargs)
            else:
                self._detector = self.cfg.detector
        return self._detector

    def heldout(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        """The first `heldout_batches` val batches (only the keys probes read), cached."""
        if self._heldout is not None:
            return self._heldout
        self._heldout = []
        datamodule = getattr(trainer, "datamodule", None)
        wanted = self.cfg.heldout_batches
        if wanted <= 0 or datamodule is None or not hasattr(datamodule, "val_dataloader"):
            log.warning("Probes: no val_dataloader; teacher-forced and linear probes are skipped")
            return self._heldout
        for batch in datamodule.val_dataloader():
            self._heldout.append({k: batch[k] for k in HELDOUT_KEYS if k in batch})
            if len(self._heldout) >= wanted:
                break
        return self._heldout

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.cfg.ema and getattr(pl_module, "ema", None) is None:
            raise ValueError(
                "probes.ema=true samples the UNet's EMA weights, but the module keeps none: "
                "set model.ema_decay (e.g. 0.99) or probes.ema=false"
            )

    # -- work --------------------------------------------------------------------------------
    def probe(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: int
    ) -> dict[str, float] | None:
        """One probe pass at `step` (once per step, on global rank 0); logs and returns metrics."""
        return self.run_once(trainer, pl_module, step)

    def run(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: int
    ) -> dict[str, float] | None:
        with ema_weights(pl_module) if self.cfg.ema else nullcontext():
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

    def output_path(self, trainer: L.Trainer, step: int) -> Path:
        return probe_paths(self.run_dir(trainer), step)[0]

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
