"""`ymn-train`: compose the Hydra config, then datamodule → module → callbacks → loggers → trainer.

ymn-train                                   # the embedded default (tiny model, synthetic data)
ymn-train experiment=phase1_640 model=sd15 data=yamanosusume \
    model.components.pretrained=/models/sd15
ymn-train experiment=phase2_704 init_from=runs/phase1/...   # phase chaining
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ymn.callbacks.carry_optimizer import CarryOptimizerState, previous_phase_checkpoint
from ymn.paths import CONFIG_DIR
from ymn.reliability.checkpointing import AtomicCheckpointIO, ResumeState
from ymn.reliability.config_schema import validate_config
from ymn.reliability.logging_guard import guard_logger
from ymn.reliability.resume import resolve_ckpt_path
from ymn.reliability.rng import RngState
from ymn.run_record import RecordDataManifest, record_run

log = logging.getLogger(__name__)

# Nothing ever waits on the network: wandb logs offline unless the user says otherwise, and the
# hub libraries never look online.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def apply_init_from(cfg: DictConfig) -> None:
    """`init_from=RUN_DIR|MODEL`: start from earlier weights (fresh optimizer, step 0)."""
    if cfg.get("init_from"):
        with open_dict(cfg):
            cfg.model.components.pretrained = str(Path(cfg.init_from).expanduser().resolve())
        log.info("Starting from the weights of %s", cfg.model.components.pretrained)


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """Instantiate each configured logger; one that fails to start is dropped, never fatal."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        try:
            loggers.append(instantiate(logger_cfg))
        except Exception as error:  # wandb down or misconfigured must not stop training
            log.warning("Logger %r failed to start (%s); training goes on without it.", name, error)
    config = OmegaConf.to_container(cfg, resolve=True)
    started = []
    for logger in loggers:
        try:
            logger.log_hyperparams(config)
        except Exception as error:  # e.g. wandb.init failing lazily here: drop that logger
            log.warning("Logger %s failed to start (%s); dropped.", type(logger).__name__, error)
            continue
        started.append(guard_logger(logger))
    return started


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def build_model(cfg: DictConfig, loss_guard: Any) -> Any:
    """The LightningModule of `cfg.model`. `_convert_="partial"`: the `losses` dict holds
    instantiated modules (tensors), which an OmegaConf container refuses."""
    # a partial, so the guard arrives as itself: Hydra would turn a dataclass kwarg into a config
    return instantiate(cfg.model, _partial_=True, _convert_="partial")(loss_guard=loss_guard)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit once; returns the final logged metrics (for sweeps)."""
    validate_config(cfg)  # unknown keys / wrong types fail here, before any work
    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir, cfg.get("allow_pickle_ckpt"))
    L.seed_everything(cfg.seed, workers=True)
    apply_init_from(cfg)

    module = build_model(cfg, loss_guard=instantiate(cfg.faults))
    datamodule = instantiate(cfg.data, tokenizer=module.tokenizer)
    callbacks = [*build_callbacks(cfg), RecordDataManifest(run_dir), RngState(), ResumeState()]
    if cfg.get("carry_optimizer") and cfg.get("init_from"):
        callbacks.append(CarryOptimizerState(previous_phase_checkpoint(cfg.init_from)))
    loggers = build_loggers(cfg, run_dir)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )

    record_run(run_dir, cfg)
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    if cfg.get("export") and trainer.is_global_zero:
        from ymn.model.export import export_run

        fp16 = bool(cfg.get("export_single_file_fp16"))
        written = export_run(module, run_dir / "export", single_file_fp16=fp16)
        log.info("Exported model: %s", ", ".join(str(p) for p in written))
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric for sweepers when one is configured."""
    with open_dict(cfg):
        cfg.paths.run_dir = HydraConfig.get().runtime.output_dir
    metrics = train(cfg)
    log.info("Run directory: %s", cfg.paths.run_dir)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
