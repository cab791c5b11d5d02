"""Checkpoint storage on the tiny model: one copy per step, weights-only best, size report, disk
check (issue 11, item 7)."""

from __future__ import annotations

import logging
import os
import re
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.data import DataLoader
from transformers import CLIPTextConfig, CLIPTextModel

import ymn.reliability.checkpoint_size as checkpoint_size
from tests.conftest import make_batch
from ymn.model.components import build_tiny
from ymn.model.export import apply_lightning_checkpoint
from ymn.model.module import DiffusionModule
from ymn.model.single_file import SD15_CONFIG_DIR
from ymn.reliability.checkpoint_size import (
    CheckpointDiskError,
    CheckpointSize,
    check_disk,
    estimate_checkpoint,
)
from ymn.reliability.checkpointing import AtomicCheckpointIO, RunCheckpoint

PARTS = ("vae", "text_encoder", "unet")


def fit(
    folder: Path, steps: int, val_every: int, extra: tuple = (), **checkpoint: object
) -> DiffusionModule:
    """`steps` optimizer steps of the tiny model, validating every `val_every`; `extra`: more
    callbacks, before the checkpoint callback."""
    module = DiffusionModule(build_tiny(0), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    callback = RunCheckpoint(dirpath=str(folder), **checkpoint)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        callbacks=[*extra, callback],
        plugins=[AtomicCheckpointIO()],
        val_check_interval=val_every,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder.parent,
    )
    train = [make_batch(2, 64, seed=i) for i in range(steps)]
    val = [make_batch(2, 64, seed=99)]
    trainer.fit(module, DataLoader(train, batch_size=None), DataLoader(val, batch_size=None))
    return module


def saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.mark.parametrize(
    "every_n_train_steps,steps,val_every",
    [(100, 3, 3), (2, 4, 2)],
    ids=["best-first-then-final-step", "step-first-then-best"],
)
def test_one_file_per_step_and_size_logged(tmp_path, caplog, every_n_train_steps, steps, val_every):
    """The issue's 3-step run wrote best.ckpt and last.ckpt as two copies of one step; now a
    step is on disk once, whichever name is written first, and the start-up log gives its size."""
    folder = tmp_path / "checkpoints"
    with caplog.at_level(logging.INFO, logger="ymn.reliability.checkpointing"):
        fit(folder, steps, val_every, every_n_train_steps=every_n_train_steps, keep_last=3)
    files = [p for p in folder.iterdir() if not p.is_symlink()]
    assert (folder / "best.ckpt") in files and saved_step(folder / "last.ckpt") == steps
    inodes_by_step: dict[int, set[int]] = {}
    for path in files:
        inodes_by_step.setdefault(saved_step(path), set()).add(path.stat().st_ino)
    assert all(len(inodes) == 1 for inodes in inodes_by_step.values()), inodes_by_step
    best = folder / "best.ckpt"
    twins = [p for p in files if p != best and saved_step(p) == saved_step(best)]
    assert twins and all(os.path.samefile(best, p) for p in twins)  # last.ckpt or step*.ckpt

    [report] = [r.getMessage() for r in caplog.records if "one checkpoint is" in r.getMessage()]
    logged_mb = float(re.search(r"one checkpoint is ([\d.]+) MB", report).group(1))
    assert logged_mb * 1e6 == pytest.approx(best.stat().st_size, rel=0.05)
    assert "keep_last=3 holds up to 3 x" in report and "free there" in report


class ScriptedProbe(L.Callback):
    """Sets a probe metric in `trainer.callback_metrics` after each batch, as ProbeCallback does."""

    def __init__(self, key: str, values: dict[int, float]) -> None:
        self.key, self.values = key, values

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trainer.callback_metrics[self.key] = torch.tensor(self.values[trainer.global_step])


def test_best_can_follow_a_probe_reading_set_before_validation(tmp_path):
    """experiment=toy_phase1_select keeps best.ckpt by the probes' lead reading: the probe pass
    runs after the batch, the checkpoint reads the metric when validation ends."""
    folder = tmp_path / "checkpoints"
    key = "probe/identity/drawn/n1"
    probe = ScriptedProbe(key, {1: 0.2, 2: 0.9, 3: 0.5})
    fit(folder, 3, 1, extra=(probe,), every_n_train_steps=1, keep_last=3,
        best_monitor=key, best_mode="max")  # fmt: skip
    assert saved_step(folder / "best.ckpt") == 2
    assert os.path.samefile(folder / "best.ckpt", folder / "step0000002.ckpt")


def test_weights_fp16_best_is_small_and_exports(tmp_path):
    folder = tmp_path / "checkpoints"
    module = fit(folder, 2, 2, every_n_train_steps=2, best_format="weights_fp16")
    best, step = folder / "best.ckpt", folder / "step0000002.ckpt"
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in checkpoint
    assert {v.dtype for v in checkpoint["state_dict"].values() if v.is_floating_point()} == {
        torch.float16
    }
    size = estimate_checkpoint(module, [torch.optim.AdamW(module.trainable_parameters())])
    assert best.stat().st_size == pytest.approx(size.weights_fp16, rel=0.05)
    assert best.stat().st_size < 0.25 * step.stat().st_size
    exported = apply_lightning_checkpoint(build_tiny(5), best)  # what ymn-export does with it
    for part in PARTS:
        for key, value in getattr(module, part).state_dict().items():
            got = getattr(exported, part).state_dict()[key]
            assert torch.equal(got, value.half().float()), f"{part}.{key}"


def test_disk_without_room_for_one_checkpoint_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_size, "free_bytes", lambda path: 5_000_000)
    folder = tmp_path / "checkpoints"
    with pytest.raises(CheckpointDiskError, match=r"has 5.0 MB free but one checkpoint needs"):
        fit(folder, 2, 2, every_n_train_steps=1)
    assert not folder.exists() or not any(folder.iterdir())


def test_disk_report_warns_when_keep_last_does_not_fit(monkeypatch):
    size = CheckpointSize(weights=4_000, optimizer=8_000, ema=0, weights_fp16=2_000)
    monkeypatch.setattr(checkpoint_size, "free_bytes", lambda path: 30_000)
    report, fits_all = check_disk(Path("run"), size, keep_last=3, best_format="full")
    assert not fits_all and "NOT enough" in report and "keep_last" in report
    report, fits_all = check_disk(Path("run"), size, keep_last=1, best_format="weights_fp16")
    assert fits_all and "NOT enough" not in report


def test_sd15_estimate_matches_the_issue():
    """phase1_640 (SD 1.5, text encoder trained, AdamW): 12.1 GB a checkpoint; weights-only best
    in float16 is 2.1 GB."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(SD15_CONFIG_DIR / "unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    module = torch.nn.ModuleDict({"unet": unet, "vae": vae, "text_encoder": text})
    optimizer = torch.optim.AdamW([*unet.parameters(), *text.parameters()])
    size = estimate_checkpoint(module, [optimizer])
    assert size.full / 1e9 == pytest.approx(12.1, abs=0.05)
    assert size.weights / 1e9 == pytest.approx(4.27, abs=0.01)
    assert size.best("weights_fp16") / 1e9 == pytest.approx(2.13, abs=0.01)


def test_unknown_best_format_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="callbacks.checkpoint.best_format='half'"):
        RunCheckpoint(dirpath=str(tmp_path), best_format="half")
