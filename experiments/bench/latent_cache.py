"""latent_cache: training steps/s from cached latents (ymn-cache-latents) vs encoding the pixels
with the VAE every step; same module, same batches' draws, steps interleaved one by one."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from experiments.bench.common import (
    Timer,
    median,
    paired_ratio,
    setup_torch,
    summarize,
    synthetic_shards,
)

RES, BATCH = 128, 8


def train_step(module: Any, optimizer: torch.optim.Optimizer, batch: dict[str, Any]) -> float:
    """One step of the module's own loss on `batch` (latents or pixels); returns seconds."""
    start = time.perf_counter()
    latents = module.batch_latents(batch)
    noise = module.sample_noise(latents)
    t = torch.randint(0, module.noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
    module.diffusion_loss(latents, batch["input_ids"], noise, t).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def run(quick: bool = False) -> dict[str, Any]:
    """Build the cache, then alternate pixel and cached steps."""
    setup_torch()
    from ymn.data.decode import resolve_shards
    from ymn.data.latent_source import LatentSource
    from ymn.data.latents import cache_latents
    from ymn.data.pixels import PixelSource
    from ymn.data.sample_source import StreamConfig
    from ymn.data.stream import TrainStream
    from ymn.model.components import build_tiny
    from ymn.model.module import DiffusionModule

    n_images, steps, warmup = (48, 6, 1) if quick else (160, 24, 3)
    components = build_tiny(seed=0)
    module = DiffusionModule(components, optimizer=torch.optim.AdamW)
    module.unet.train(), module.text_encoder.train()
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-4)
    tok = components.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic_shards(Path(tmp), n=n_images, size=RES, shard_size=40)
        shards, manifest = resolve_shards(str(folder))
        with Timer() as build:
            cache_latents(str(folder), Path(tmp) / "cache", components.vae, resolution=RES,
                          flip=True, progress=False)  # fmt: skip
        config = StreamConfig(resolution=RES, batch_size=BATCH, val_fraction=0.0, crop="center")
        pixel_stream = TrainStream(PixelSource(shards, manifest), config, tokenizer=tok)
        cached_stream = TrainStream(LatentSource(Path(tmp) / "cache"), config, tokenizer=tok)
        data = {"pixels": [], "cached": []}
        with Timer() as t_pixels:
            pixel_batches = list(pixel_stream)
        with Timer() as t_cached:
            cached_batches = list(cached_stream)
        data["pixels"] = [sum(len(b["captions"]) for b in pixel_batches) / t_pixels.seconds]
        data["cached"] = [sum(len(b["captions"]) for b in cached_batches) / t_cached.seconds]
        results: dict[str, list[float]] = {"vae_every_step": [], "cached_latents": []}
        for i in range(steps):
            results["vae_every_step"].append(
                train_step(module, optimizer, pixel_batches[i % len(pixel_batches)])
            )
            results["cached_latents"].append(
                train_step(module, optimizer, cached_batches[i % len(cached_batches)])
            )
    results = {k: v[warmup:] for k, v in results.items()}
    speedup = paired_ratio(results, "vae_every_step", "cached_latents")
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "images": n_images,
            "resolution": RES,
            "batch": BATCH,
            "steps": steps,
            "warmup": warmup,
            "model": "tiny",
            "flip": True,
        },  # fmt: skip
        "unit": "seconds per training step (median), data in samples/s (one pass each)",
        "figures": summarize(results),
        "steps_per_s": {k: 1 / median(v) for k, v in results.items()},
        "stream_samples_per_s": {k: v[0] for k, v in data.items()},
        "cache_build_s": build.seconds,
        "ratio": {"steps/s cached / steps/s VAE every step": speedup},
        "target": "> 1 (cached faster)",
        "met": speedup > 1.0,
    }
