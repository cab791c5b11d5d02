"""unet_width: the tiny base's UNet at its shipped width (`--unet-channels 32`) against twice
that (`--unet-channels 64`), interleaved on one thread: a stage-2 training step (text encoder +
UNet, batch 16, v target, AdamW, bfloat16 autocast, as `ymn.model.tiny_base` trains) and one
sampling step (a classifier-free-guided UNet call on 2 x 8 latents, as a probe pass denoises).
Figure: median seconds per step."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from experiments.bench.common import interleave, paired_ratio, setup_torch, summarize
from experiments.bench.stage2_autocast import BATCH as TRAIN_BATCH
from experiments.bench.stage2_autocast import step_of

SAMPLE_BATCH = 8  # prompts per sampling call; CFG doubles it
WIDTHS = (32, 64)


def sampling_step(channels: int) -> Callable[[], float]:
    """A timed guided denoising call at `channels` (float32, no grad, as probes sample)."""
    from ymn.model.components import tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet(channels).eval()
    generator = torch.Generator().manual_seed(1)
    size = unet.config.sample_size
    latents = torch.randn(2 * SAMPLE_BATCH, 4, size, size, generator=generator)
    context = torch.randn(2 * SAMPLE_BATCH, 77, 64, generator=generator)
    timestep = torch.tensor(500)

    def step() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            unet(latents, timestep, context)
        return time.perf_counter() - start

    return step


def run(quick: bool = False) -> dict[str, Any]:
    """Interleaved repeats of both widths; returns the JSON payload."""
    from ymn.model.components import tiny_unet

    setup_torch()
    repeats, warmup = (3, 1) if quick else (16, 3)
    arms = {
        **{f"train_c{c}": step_of(True, c) for c in WIDTHS},
        **{f"sample_c{c}": sampling_step(c) for c in WIDTHS},
    }
    results = {k: v[warmup:] for k, v in interleave(arms, repeats + warmup).items()}
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "train_batch": TRAIN_BATCH,
            "sample_batch": SAMPLE_BATCH,
            "threads": 1,
            "repeats": repeats,
            "warmup_repeats": warmup,
            "interleaving": "all four arms each repeat, order reversed every other repeat",
        },
        "unit": "seconds per step (median after warm-up)",
        "figures": summarize(results),
        "target": "informational: the cost of a twice-as-wide UNet",
        "met": None,
        "ratio": {
            "train c64 / c32": paired_ratio(results, "train_c64", "train_c32"),
            "sample c64 / c32": paired_ratio(results, "sample_c64", "sample_c32"),
        },
        "parameters_millions": {
            f"unet_c{c}": sum(p.numel() for p in tiny_unet(c).parameters()) / 1e6 for c in WIDTHS
        },
    }
