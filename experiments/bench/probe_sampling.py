"""probe_sampling: images/s of the batched probe pass (sampling, per-image attention capture,
detection) vs a bare batched StableDiffusionPipeline call on the same prompts, seeds and batches;
and the largest pixel difference of the batched probe images to the unbatched ones. Random-init
tiny model of the embedded architecture. Target: ratio >= 0.9."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from experiments.bench.common import (
    Timer,
    interleave,
    median,
    paired_ratio,
    setup_torch,
    summarize,
)

SIZE = 64  # px: the tiny model's 16x16 latents, so the shared 2-core machine can repeat arms


class KeepingDetector:
    """The synthetic detector, keeping each image it is shown (for the pixel comparison)."""

    def __init__(self) -> None:
        from ymn.probes.detectors import load_detector

        self.inner = load_detector("synthetic")
        self.images: list[np.ndarray] = []

    def detect(self, image: Any) -> list:
        self.images.append(np.asarray(image, dtype=np.int16))
        return self.inner.detect(image)


def bare_pass(pipe: Any, prompts: list[dict], cfg: Any) -> list[np.ndarray]:
    """The same prompts, seeds and batches through the pipeline alone."""
    images = []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start : start + cfg.batch_size]
        out = pipe(
            [r["prompt"] for r in batch],
            height=SIZE,
            width=SIZE,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            generator=[torch.Generator().manual_seed(r["seed"]) for r in batch],
        )
        images += [np.asarray(im, dtype=np.int16) for im in out.images]
    return images


def run(quick: bool = False) -> dict[str, Any]:
    """Interleave the probe pass and the bare pipeline; then compare batched vs unbatched."""
    setup_torch()
    from ymn.model.components import build_tiny
    from ymn.model.module import DiffusionModule
    from ymn.probes.config import ProbeConfig
    from ymn.probes.prompts import build_probe_prompts
    from ymn.probes.runner import sample_probe

    seeds, repeats = ([0], 1) if quick else ([0, 1, 2, 3], 5)
    prompts = build_probe_prompts(counts=(1, 2, 3, 4, 5), layouts=("row",), seeds=seeds,
                                  characters="auto")  # fmt: skip
    cfg = ProbeConfig(size=(SIZE, SIZE), characters="auto")  # default steps, cfg, batch_size
    module = DiffusionModule(build_tiny(0), optimizer=torch.optim.AdamW).eval()
    pipe = module.make_pipeline()  # a StableDiffusionPipeline over the same modules, DDIM
    outputs: dict[str, list[np.ndarray]] = {}

    def probe_arm() -> float:
        detector = KeepingDetector()
        with Timer() as t, torch.no_grad():
            sample_probe(module, prompts, detector, cfg, image_dir=None)
        outputs["probe"] = detector.images
        return len(prompts) / t.seconds

    def bare_arm() -> float:
        with Timer() as t:
            outputs["bare"] = bare_pass(pipe, prompts, cfg)
        return len(prompts) / t.seconds

    arms = {"probe_pass": probe_arm, "bare_pipeline": bare_arm}
    interleave(arms, 1)  # warm-up, not recorded: first calls pay one-off allocation costs
    results = interleave(arms, repeats)
    unbatched = KeepingDetector()
    one = ProbeConfig(size=(SIZE, SIZE), characters="auto", batch_size=1)
    with Timer() as t, torch.no_grad():
        sample_probe(module, prompts, unbatched, one, image_dir=None)
    unbatched_rate = len(prompts) / t.seconds

    def diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
        return max(int(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))

    ratio = paired_ratio(results, "probe_pass", "bare_pipeline")
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "images_per_pass": len(prompts),
            "counts": [1, 2, 3, 4, 5],
            "batch_size": cfg.batch_size,
            "steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
            "size": SIZE,
            "attention_on_samples": cfg.attention_on_samples,
            "detector": "synthetic",
            "model": "tiny architecture, random init (build_tiny(0))",
            "repeats": repeats,
        },
        "unit": "images/s",
        "figures": {
            **summarize(results),
            "probe_pass_unbatched": unbatched_rate,
            "max_abs_diff": diff(outputs["probe"], unbatched.images),
            "max_abs_diff_to_bare": diff(outputs["probe"], outputs["bare"]),
            "max_abs_diff_unit": "uint8 pixel levels (0-255)",
        },
        "ratio": {
            "probe pass / bare batched pipeline (images/s)": ratio,
            "batched / unbatched probe pass (images/s)": median(results["probe_pass"])
            / unbatched_rate,
        },
        "target": ">= 0.9",
        "met": ratio >= 0.9,
    }
