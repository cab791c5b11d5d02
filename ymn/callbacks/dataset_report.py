"""DatasetReportLogger: at the start of the fit, the `ymn-report` of the training shards, written
to `<run dir>/dataset_report/` and its figures logged to wandb (`data_report/<figure>`).

A no-op without a wandb logger, when disabled, on ranks other than 0, and for a datamodule that
is not built on packed shards. A report that fails is a warning, never a stopped run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from ymn.callbacks.schedule import wandb_loggers

log = logging.getLogger(__name__)


class DatasetReportLogger(L.Callback):
    """Log the dataset report's figures once, when the fit starts.

    enabled: switch. max_captions: captions measured at most (every k-th sample beyond).
    depth: folder depth of the category-share plot. out_dir: the run dir (report below it).
    """

    def __init__(
        self,
        enabled: bool = True,
        max_captions: int = 4096,
        depth: int = 2,
        out_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.enabled = bool(enabled)
        self.max_captions = int(max_captions)
        self.depth = int(depth)
        self.out_dir = out_dir
        self.figures: dict[str, Path] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = wandb_loggers(trainer)
        if not (self.enabled and loggers and trainer.is_global_zero):
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not all(hasattr(datamodule, a) for a in ("shards", "config", "manifest_file")):
            log.info("dataset report skipped: the datamodule has no packed shards and settings")
            return
        try:
            self.figures = self.write(datamodule, Path(self.out_dir or trainer.default_root_dir))
            for logger in loggers:
                for name, path in self.figures.items():
                    logger.log_image(key=f"data_report/{name}", images=[str(path)], step=0)
        except Exception as error:  # a report must never stop the run
            log.warning("Could not write or log the dataset report: %s", error)

    def write(self, datamodule: Any, run_dir: Path) -> dict[str, Path]:
        """The report of the datamodule's shards under `run_dir/dataset_report/`."""
        from ymn.data.decode import resolve_shards
        from ymn.data.report import build_report
        from ymn.data.report_figures import write_report

        shards, manifest = resolve_shards(datamodule.shards, datamodule.manifest_file)
        report = build_report(
            shards,
            manifest,
            datamodule.config,  # its StreamConfig: resolution, batch size, multiply mode, ...
            tokenizer=getattr(datamodule, "tokenizer", None),
            max_captions=self.max_captions,
            check=False,  # the data setup's preflight has compared the shards already
        )
        path, figures = write_report(report, run_dir / "dataset_report", depth=self.depth)
        log.info("dataset report: %s", path)
        return figures
