"""Every `ymn-*` console script of pyproject.toml, run as installed: exit 0 on success, non-zero
with a one-line reason (no traceback) for a bad path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import small_train_command, subprocess_env

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
NAMES = sorted(SCRIPTS)


@dataclass(frozen=True)
class Inputs:
    """Small inputs shared by the runs; `tmp` is each test's own folder."""

    tmp: Path
    model: Path  # a tiny diffusers folder
    images: Path  # a 6-image synthetic ASP tree
    shards: Path  # its shards
    missing: Path  # a path that does not exist


@pytest.fixture(scope="module")
def data(module_tmp) -> tuple[Path, Path]:
    from ymn.data.pack import pack_folder
    from ymn.data.synthetic import generate_dataset

    root = module_tmp.mktemp("entry-data")
    generate_dataset(root / "images", 6, seed=0, size=64)
    pack_folder(root / "images", root / "shards", progress=False)
    return root / "images", root / "shards"


@pytest.fixture
def inputs(tmp_path, tiny_model, data) -> Inputs:
    return Inputs(tmp_path, tiny_model, *data, missing=tmp_path / "no-such-path")


def run_dir_with_export(i: Inputs) -> Path:
    run = i.tmp / "run"
    shutil.copytree(i.model, run / "export" / "diffusers")
    (run / "config_resolved.yaml").write_text("model: {}\n")
    return run


def train_args(i: Inputs, model: Path, *extra: str) -> list[str]:
    """small_train_command's overrides (its interpreter and `-m ymn.train` dropped)."""
    return small_train_command(i.tmp, model, i.tmp / "train-run", *extra)[3:]


SUCCESS: dict[str, Callable[[Inputs], list[str]]] = {
    "ymn-train": lambda i: train_args(
        i, i.model, "trainer.max_steps=1", "export=true", "export_single_file_fp16=true"
    ),
    "ymn-sample": lambda i: [
        str(i.model),
        "--prompt",
        "a",
        "--steps",
        "1",
        "--size",
        "64x64",
        "--out",
        str(i.tmp / "samples"),
        "--device",
        "cpu",
    ],  # fmt: skip
    "ymn-export": lambda i: [str(run_dir_with_export(i))],
    "ymn-balance": lambda i: [str(i.images)],
    "ymn-caption": lambda i: [str(i.images), "--no-report"],
    "ymn-synth": lambda i: [str(i.tmp / "synth"), "--n", "2", "--size", "64"],
    "ymn-pack": lambda i: [str(i.images), str(i.tmp / "packed")],
    "ymn-cache-latents": lambda i: [
        str(i.shards),
        str(i.tmp / "cache"),
        "--resolution",
        "64",
        "--model",
        str(i.model),
        "--device",
        "cpu",
    ],  # fmt: skip
    "ymn-report": lambda i: [str(i.shards), "--out", str(i.tmp / "report"), "--resolution", "64"],
}

FAILURE: dict[str, Callable[[Inputs], list[str]]] = {
    "ymn-train": lambda i: train_args(i, i.missing),
    "ymn-sample": lambda i: [str(i.missing), "--prompt", "a", "--out", str(i.tmp / "o")],
    "ymn-export": lambda i: [str(i.missing), "--out", str(i.tmp / "o")],
    "ymn-balance": lambda i: [str(i.missing)],
    "ymn-caption": lambda i: [str(i.missing), "--no-report"],
    "ymn-synth": lambda i: [str(i.missing / "out"), "--n", "1", "--size", "64"],
    "ymn-pack": lambda i: [str(i.missing), str(i.tmp / "o")],
    "ymn-cache-latents": lambda i: [str(i.missing), str(i.tmp / "o")],
    "ymn-report": lambda i: [str(i.missing), "--out", str(i.tmp / "o")],
}


def run_script(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"{script} is missing: install the package (`make install`)"
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True
    )


def test_every_script_has_cases():
    assert set(SUCCESS) == set(FAILURE) == set(SCRIPTS)


@pytest.mark.parametrize("name", NAMES)
def test_success_exits_zero(name, inputs):
    result = run_script(name, SUCCESS[name](inputs), inputs.tmp)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    if name == "ymn-train":  # export_single_file_fp16 reaches the end-of-fit export
        single = inputs.tmp / "train-run" / "export" / "model.safetensors"
        with safe_open(str(single), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    if name == "ymn-export":
        assert (inputs.tmp / "run" / "export" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_bad_path_exits_nonzero_with_a_reason(name, inputs):
    (inputs.missing.parent).mkdir(exist_ok=True)
    if name == "ymn-synth":  # OUT below a file: cannot be created
        inputs.missing.write_text("a file, not a folder")
    result = run_script(name, FAILURE[name](inputs), inputs.tmp)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    reasons = [line for line in output.splitlines() if str(inputs.missing) in line]
    assert reasons, output[-3000:]
    if name != "ymn-train":  # Hydra words ymn-train's errors itself
        assert reasons[-1].startswith(f"{name}:"), reasons
