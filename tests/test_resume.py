"""Exact resume: a run SIGKILLed at an arbitrary step and resumed with `ckpt_path=last` ends
bitwise identical to the same run uninterrupted (weights and optimizer state); checkpoints are
atomic; SIGTERM saves a checkpoint and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, "-m", "ymn.train"]


def train_args(tmp: Path, model: Path, run: Path, *extra: str) -> list[str]:
    """The smoke experiment, shrunk: 64 px, batch 2, no samples/probes, CSV logger."""
    return [
        *TRAIN,
        "experiment=smoke",
        "~callbacks.samples",
        "~callbacks.probes",
        "logger=csv",
        "export=false",
        "data.resolution=64",
        "data.batch_size=2",
        "data.prepare.synth.size=64",
        "data.prepare.synth.n=60",
        f"paths.data_dir={tmp / 'data'}",
        f"model.pretrained={model}",
        f"hydra.run.dir={run}",
        *extra,
    ]


def env() -> dict[str, str]:
    # One thread per process: the shared CI cores are oversubscribed otherwise.
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from ymn.model.components import build_tiny
    from ymn.model.export import save_diffusers

    path = tmp_path_factory.mktemp("model") / "tiny"
    save_diffusers(build_tiny(0), path)
    return path


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a, b, where: str = "") -> None:
    """Every tensor in two nested structures is bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [0])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, tiny_model, workers):
    steps = 6
    common = (
        "trainer.max_steps=6",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.checkpoint.keep_last=10",
        f"data.num_workers={workers}",
    )
    run(train_args(tmp_path, tiny_model, tmp_path / "A", *common))
    uninterrupted = load(tmp_path / "A" / "checkpoints" / f"step{steps:07d}.ckpt")

    run_b = tmp_path / "B"
    proc = subprocess.Popen(
        train_args(tmp_path, tiny_model, run_b, *common),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(run_b / "checkpoints" / "step0000002.ckpt", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = os.path.realpath(run_b / "checkpoints" / "last.ckpt")
    assert not killed_at.endswith(f"step{steps:07d}.ckpt"), "killed too late to test resume"

    resumed = run(train_args(tmp_path, tiny_model, run_b, *common, "ckpt_path=last"))
    assert "Resuming from" in resumed.stdout + resumed.stderr
    final = load(run_b / "checkpoints" / f"step{steps:07d}.ckpt")
    assert final["global_step"] == uninterrupted["global_step"] == steps
    assert_same_tensors(uninterrupted["state_dict"], final["state_dict"], "state_dict")
    assert_same_tensors(
        uninterrupted["optimizer_states"], final["optimizer_states"], "optimizer_states"
    )
