"""`ymn-train experiment=smoke` end to end with the network cut off, and its exported model."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import smoke_command


def offline_command(command: list[str]) -> list[str]:
    """Run with no network at all where the kernel lets us (a new, empty network namespace)."""
    probe = (
        subprocess.run(["unshare", "-rn", "true"], capture_output=True)
        if shutil.which("unshare")
        else None
    )
    if probe is not None and probe.returncode == 0:
        return ["unshare", "-rn", *command]
    return command  # HF_HUB_OFFLINE / WANDB_MODE=offline below still keep it off the network


@pytest.fixture(scope="module")
def smoke_run(module_tmp) -> Path:
    root = module_tmp.mktemp("smoke")
    run_dir = root / "run"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
    }
    command = smoke_command(run_dir, root / "data")
    result = subprocess.run(offline_command(command), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


def test_run_dir_records_config_commit_packages_and_manifest(smoke_run):
    for name in ("config_resolved.yaml", "git.json", "requirements.txt", "data_manifest.json"):
        assert (smoke_run / name).stat().st_size > 0, name
    assert "torch==" in (smoke_run / "requirements.txt").read_text()
    assert "smoke" in (smoke_run / "config_resolved.yaml").read_text()


def test_metrics_reach_the_run_dir_and_wandb_offline(smoke_run):
    metrics = (smoke_run / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics
    assert list((smoke_run / "wandb").glob("offline-run-*"))


def test_export_loads_offline_in_stable_diffusion_pipeline(smoke_run):
    from diffusers import StableDiffusionPipeline

    folder = smoke_run / "export" / "diffusers"
    for name in ("vocab.json", "merges.txt"):
        assert (folder / "tokenizer" / name).is_file()
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    image = pipe("2people", num_inference_steps=2, generator=generator, height=64, width=64)
    assert image.images[0].size == (64, 64)


def test_val_loss_is_split_per_category_and_people_count(smoke_run):
    header = (smoke_run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    split = [key for key in header if key.startswith("val/loss/")]
    assert any(key.startswith("val/loss/n") for key in split), header
    assert set(split) - {k for k in split if k.startswith("val/loss/n")}, header  # a category
