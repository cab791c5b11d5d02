"""Shared fixtures: a tiny random model and small in-memory batches (no network, CPU only)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from PIL import Image

from tests.launch import ForkedRun, forkable, run_forked

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_components():
    from ymn.model.components import build_tiny

    return build_tiny(seed=0)


class ModuleTemp:
    """`mktemp` for a test module's shared fixtures, under one folder of that module."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


@pytest.fixture(scope="module")
def module_tmp(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ModuleTemp]:
    """Folders for module-scoped fixtures, deleted once the module's tests pass: trained runs
    and checkpoints (hundreds of MB) would otherwise stay on disk until the session ends.
    Kept after a failure, like a failing test's tmp_path."""
    failed_before = request.session.testsfailed
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield ModuleTemp(root)
    if request.session.testsfailed == failed_before:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny SD-shaped model saved as a diffusers folder (for subprocess runs)."""
    from ymn.model.components import build_tiny
    from ymn.model.export import save_diffusers

    path = tmp_path_factory.mktemp("model") / "tiny"
    save_diffusers(build_tiny(0), path)
    return path


class AtStep(Callback):
    """Test-only: `act` on the batch that starts once `step` steps are done; `overrides` adds
    the subclass to an `ymn-train` run by its import path."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            self.act(batch)

    def act(self, batch: Any) -> None:
        raise NotImplementedError

    @classmethod
    def overrides(cls, step: int) -> tuple[str, str]:
        key = "callbacks." + re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()  # NanAt: nan_at
        # pytest imports a test file by its base name; the training subprocess, started at the
        # repository root, imports it from the `tests` folder
        target = f"tests.{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"
        return (f"+{key}._target_={target}", f"+{key}.step={step}")


def subprocess_env(**extra: str) -> dict[str, str]:
    """One torch thread per process (shared CI cores oversubscribe otherwise), wandb off."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}


def small_train_command(
    tmp: Path, model: Path, run_dir: Path, *extra: str, synth_n: int = 40
) -> list[str]:
    """`ymn-train experiment=smoke` shrunk: 64 px, batch 2, no samples/probes, CSV logger."""
    return [
        sys.executable,
        "-m",
        "ymn.train",
        "experiment=smoke",
        "~callbacks.samples",
        "~callbacks.probes",
        "logger=csv",
        "export=false",
        "data.resolution=64",
        "data.batch_size=2",
        "data.prepare.synth.size=64",
        f"data.prepare.synth.n={synth_n}",
        f"paths.data_dir={tmp / 'data'}",
        f"model.components.pretrained={model}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def smoke_command(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    """`ymn-train experiment=smoke` for 2 steps and one validation, its own samples and loggers."""
    return [
        sys.executable,
        "-m",
        "ymn.train",
        "experiment=smoke",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={data_dir}",
        *extra,
    ]


def run_training(
    args: list[str], ok: bool = True, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a command to its end (exit, kill, refusal), output captured; `ok`: assert exit 0.
    `python -m ymn.train` runs are forked from a pre-imported server (`tests/launch.py`)."""
    env = env or subprocess_env()
    if forkable(args):
        done = run_forked(args, env, ROOT, timeout)
    else:
        done = subprocess.run(
            args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def start_training(args: list[str], log: Path) -> subprocess.Popen | ForkedRun:
    """Start a command in the background with its output in `log`: a file never fills up and
    stalls the child the way an unread pipe does."""
    if forkable(args):
        return ForkedRun(args, subprocess_env(), ROOT, log, log)
    with log.open("w") as handle:
        return subprocess.Popen(
            args, cwd=ROOT, env=subprocess_env(), stdout=handle, stderr=subprocess.STDOUT
        )


def wait_for(path: Path, proc: subprocess.Popen | ForkedRun, timeout: float = 240) -> None:
    """Block until `path` exists; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def make_batch(n: int = 2, size: int = 64, seed: int = 0) -> dict:
    """A small batch shaped like the data module's."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.rand(n, 3, size, size, generator=generator) * 2 - 1,
        "captions": [f"{i + 1}people, fhml fvmd" for i in range(n)],
        "keys": [f"k{i}" for i in range(n)],
    }


# The tiny-base script's defaults are the shipped recipe (hours of stages 1b, 1c and 2); tests
# start from every optional stage off and the plain epsilon schedule, and set what they test.
TINY_BASE_TEST_FLAGS = (
    "--decoder-steps", "0", "--colour-steps", "0", "--text-steps", "0",
    "--prediction-type", "epsilon", "--zero-terminal-snr", "false", "--autocast", "none",
)  # fmt: skip


def train_tiny_base(argv: list[str]) -> int:
    """`ymn.model.tiny_base.main` with TINY_BASE_TEST_FLAGS first (later flags win)."""
    from ymn.model.tiny_base import main

    return main([*TINY_BASE_TEST_FLAGS, *argv])


def mixed_look_image(hair_of: str, outfit_of: str, box: list[float]) -> Image.Image:
    """A synthetic scene of one person with one roster character's hair and another's outfit
    (face box `box`, fractions), for the identity readings of each zone."""
    from ymn.data.synthetic import CHARACTERS

    return look_image(replace(CHARACTERS[hair_of], outfit=CHARACTERS[outfit_of].outfit), box)


def look_image(look: Any, box: list[float]) -> Image.Image:
    """A synthetic scene of one person drawn with `look` (face box `box`, fractions)."""
    from ymn.data.synthetic_draw import Background, Person, SceneSpec, draw_scene

    person = Person(look, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0])
    return draw_scene(SceneSpec("screenshot", Background("day", horizon=0.7), (person,)), 128)
