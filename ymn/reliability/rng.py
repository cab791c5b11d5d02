"""Every random number generator a run uses: capture, restore and per-step seeding.

Training randomness (noise, timesteps, VAE posterior samples, dropout) is drawn inside
`step_rng(seed, epoch, batch_idx)`, so a training step is a pure function of the weights, the
batch and its position: a resumed run does not depend on how much global randomness the
resume itself consumed (sanity checks, new DataLoader iterators). The data stream's RNGs are
derived from (seed, epoch, slot) in `ymn.data.stream`. The global RNGs are still saved in each
checkpoint and restored when training restarts, for anything else that draws from them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextmanager
def step_rng(device: torch.device, *parts: object) -> Iterator[None]:
    """Seed torch's global RNGs from `parts` for the body, then put the outer state back."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(*parts))
        yield


def capture_rng() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states, as plain tensors, lists
    and ints so that `torch.load(weights_only=True)` can read them back."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


class RngState(Callback):
    """Saves the global RNGs in each checkpoint; restores them when a resumed fit starts
    training (after the sanity check, which draws from them)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None
