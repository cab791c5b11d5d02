"""Faults during training never kill a run that could go on: NaN/inf losses (skip or stop),
corrupt inputs and a vanishing shard inside the training shards, and failing loggers."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import torch

from tests.conftest import (
    AtStep,
    run_training,
    small_train_command,
    start_training,
    subprocess_env,
    wait_for,
)


class NanAt(AtStep):
    """Fill one step's input with NaN, so that step's loss is NaN (a broken sample or an
    overflow upstream of the loss)."""

    def act(self, batch: Any) -> None:
        for key in ("pixel_values", "latents"):
            if key in batch:
                batch[key].fill_(float("nan"))


def train(
    tmp: Path, model: Path, *extra: str, **run_kw: Any
) -> tuple[Path, subprocess.CompletedProcess]:
    """A small training run in `tmp/run`; returns its folder and the finished process."""
    run_dir = tmp / "run"
    return run_dir, run_training(small_train_command(tmp, model, run_dir, *extra), **run_kw)


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def last_value(rows: list[dict[str, str]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key)]
    assert values, f"{key} never logged"
    return values[-1]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ---------------------------------------------------------------------------------------------
# Numerical faults
# ---------------------------------------------------------------------------------------------


def test_nan_loss_is_skipped_and_counted(tmp_path, tiny_model):
    run_dir, _ = train(
        tmp_path,
        tiny_model,
        "trainer.max_steps=4",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.checkpoint.keep_last=3",  # steps 2, 3 and 4 are read
        *NanAt.overrides(2),
    )
    ckpt = run_dir / "checkpoints"
    before, after, later = (weights(ckpt / f"step{s:07d}.ckpt") for s in (2, 3, 4))
    unet = [k for k in before if k.startswith("unet.")]
    assert all(torch.equal(before[k], after[k]) for k in unet), "the NaN step changed weights"
    assert not all(torch.equal(after[k], later[k]) for k in unet), "training stopped updating"
    assert all(torch.isfinite(later[k]).all() for k in later)
    assert last_value(metrics(run_dir), "train/nan_skipped") == 1.0


def test_nan_loss_stop_saves_and_names_step_and_keys(tmp_path, tiny_model):
    run_dir, done = train(
        tmp_path,
        tiny_model,
        "trainer.max_steps=4",
        "faults.nan=stop",
        *NanAt.overrides(1),
        ok=False,
    )
    assert done.returncode != 0
    assert "NonFiniteLossError" in done.stderr and "at step 1 (batch keys: [" in done.stderr
    saved = run_dir / "checkpoints" / "nonfinite-step0000001.ckpt"
    state = torch.load(saved, map_location="cpu", weights_only=True)
    assert state["global_step"] == 1


# ---------------------------------------------------------------------------------------------
# Data faults inside the training shards
# ---------------------------------------------------------------------------------------------


def corrupt_shard(path: Path) -> list[str]:
    """Rewrite a shard with one undecodable JPEG and one broken JSON; returns their keys."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    keys = sorted({m.name.split(".", 1)[0] for m, _ in members})
    bad_image, bad_json = keys[0], keys[1]
    with tarfile.open(path, "w") as out:
        for member, data in members:
            if member.name.startswith(bad_image + ".") and member.name.endswith((".jpg", ".png")):
                data = b"\xff\xd8\xff\xe0 not really a jpeg"
            if member.name == f"{bad_json}.json":
                data = b'{"category": "broken'
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return [bad_image, bad_json]


def test_corrupt_inputs_and_vanishing_shard_are_skipped_and_counted(tmp_path, tiny_model):
    from ymn.data.pack import pack_folder
    from ymn.data.synthetic import generate_dataset

    images, shards = tmp_path / "images", tmp_path / "shards"
    generate_dataset(images, n=40, seed=0, size=64)
    pack_folder(images, shards, shard_size=10, multiply_from="none")
    tars = sorted(shards.glob("*.tar"))
    assert len(tars) == 4
    corrupt_shard(tars[0])
    data = tars[1].read_bytes()
    tars[1].write_bytes(data[: len(data) // 2 + 77])  # a truncated tar
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_training(
        small_train_command(
            tmp_path,
            tiny_model,
            run_dir,
            f"data.shards={shards}",
            "data.prepare=null",
            "data.shuffle_buffer=4",
            "trainer.max_steps=40",
            "trainer.val_check_interval=20",
            "callbacks.checkpoint.every_n_train_steps=2",
            "callbacks.checkpoint.keep_last=1",
        ),
        log,
    )
    try:
        wait_for(run_dir / "checkpoints" / "step0000002.ckpt", proc)
        tars[3].unlink()  # a shard disappears mid-run
        proc.wait(timeout=300)
    finally:
        proc.kill()
    output = log.read_text()
    assert proc.returncode == 0, output[-4000:]
    for reason in ("bad_image", "bad_json", "truncated_shard", "missing_shard"):
        assert f"({reason})" in output, f"{reason} not reported"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 40  # the run went on to the end
    assert last_value(metrics(run_dir), "data/skipped") >= 4


# ---------------------------------------------------------------------------------------------
# Logging faults
# ---------------------------------------------------------------------------------------------

BROKEN_LOGGERS = """
from lightning.pytorch.loggers import Logger


def wandb_down(**kwargs):
    raise ConnectionError("wandb is down")


class FailsOnWrite(Logger):
    name = "broken"
    version = "0"

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        raise OSError("disk quota exceeded")
"""


def test_failing_loggers_never_stop_training(tmp_path, tiny_model):
    (tmp_path / "broken_loggers.py").write_text(BROKEN_LOGGERS)
    run_dir, done = train(
        tmp_path,
        tiny_model,
        "trainer.max_steps=3",
        "+logger.wandb._target_=broken_loggers.wandb_down",
        "+logger.broken._target_=broken_loggers.FailsOnWrite",
        env=subprocess_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"),
    )
    log = done.stdout + done.stderr
    assert "wandb is down" in log and "disk quota exceeded" in log
    rows = metrics(run_dir)
    assert last_value(rows, "step") == 2 and last_value(rows, "train/loss") > 0
