"""Shared fixtures: a tiny random model and small in-memory batches (no network, CPU only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_components():
    from ymn.model.components import build_tiny

    return build_tiny(seed=0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny SD-shaped model saved as a diffusers folder (for subprocess runs)."""
    from ymn.model.components import build_tiny
    from ymn.model.export import save_diffusers

    path = tmp_path_factory.mktemp("model") / "tiny"
    save_diffusers(build_tiny(0), path)
    return path


def make_batch(n: int = 2, size: int = 64, seed: int = 0) -> dict:
    """A small batch shaped like the data module's."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.rand(n, 3, size, size, generator=generator) * 2 - 1,
        "captions": [f"{i + 1}people, fhml fvmd" for i in range(n)],
        "keys": [f"k{i}" for i in range(n)],
    }
