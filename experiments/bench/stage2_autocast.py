"""stage2_autocast: one tiny-base stage-2 training step (text encoder + UNet, v target, batch
16, AdamW) in float32 against the same step under bfloat16 autocast (`ymn.model.tiny_base
--autocast bfloat16`), interleaved on one thread. Figure: median seconds per step."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from experiments.bench.common import interleave, paired_ratio, setup_torch, summarize

BATCH = 16


def step_of(autocast: bool, channels: int = 32) -> Callable[[], float]:
    """A timed stage-2 step on the tiny base's shapes, its UNet `channels` wide (fresh weights,
    fixed inputs)."""
    from ymn.model.components import tiny_text_encoder, tiny_unet

    torch.manual_seed(0)
    unet, text_encoder = tiny_unet(channels).train(), tiny_text_encoder().train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    noisy = torch.randn(BATCH, 4, size, size, generator=generator)
    target = torch.randn(BATCH, 4, size, size, generator=generator)
    timesteps = torch.randint(0, 1000, (BATCH,), generator=generator)
    input_ids = torch.randint(0, 49406, (BATCH, 77), generator=generator)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            pred = unet(noisy, timesteps, text_encoder(input_ids)[0]).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def run(quick: bool = False) -> dict[str, Any]:
    """Interleaved repeats of both arms; returns the JSON payload."""
    setup_torch()
    repeats, warmup = (4, 1) if quick else (24, 4)
    arms = {"float32": step_of(False), "bfloat16_autocast": step_of(True)}
    results = {k: v[warmup:] for k, v in interleave(arms, repeats + warmup).items()}
    speedup = 1 / paired_ratio(results, "bfloat16_autocast", "float32")
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "batch": BATCH,
            "threads": 1,
            "repeats": repeats,
            "warmup_repeats": warmup,
            "interleaving": "ABAB then BABA; speedup = 1 / median of per-repeat ratios",
        },
        "unit": "seconds per training step (median after warm-up)",
        "figures": summarize(results),
        "target": "informational: what autocast saves in the tiny base's stage 2",
        "met": None,
        "ratio": {"float32 / bfloat16_autocast": speedup},
        "cpu_bf16": torch.backends.cpu.get_cpu_capability(),
    }
