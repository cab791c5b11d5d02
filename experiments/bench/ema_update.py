"""ema_update: one step of the weights' moving average (diffusers' `EMAModel`), a loop over the
tensors (its default) against its foreach path, interleaved on one thread, over the tiny base's
UNet and (full runs) SD 1.5's UNet shapes. Figure: median seconds per update; `max_abs_diff`:
the largest difference between the two averages after a few updates along the same drifting
weights."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers.training_utils import EMAModel

from experiments.bench.common import interleave, paired_ratio, setup_torch, summarize

DECAY = 0.9999
DRIFT_UPDATES = 4
STYLES = {"per_tensor": False, "foreach": True}


def unet_shapes(model: str) -> list[torch.Size]:
    """Parameter shapes of the tiny base's UNet ("tiny") or SD 1.5's ("sd15", built on meta)."""
    from diffusers import UNet2DConditionModel

    from ymn.model.components import tiny_unet

    if model == "tiny":
        return [p.shape for p in tiny_unet(32).parameters()]
    from experiments.bench.cost_model import SD15

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15 / "unet"))
    return [p.shape for p in unet.parameters()]


def update_of(average: EMAModel, weights: list[torch.Tensor]) -> Callable[[], float]:
    """A timed `step` of `average` towards `weights`."""

    def update() -> float:
        start = time.perf_counter()
        average.step(weights)
        return time.perf_counter() - start

    return update


def compare(model: str, repeats: int, warmup: int) -> dict[str, Any]:
    """Both update styles over the same weights, interleaved; figures, ratio, difference."""
    generator = torch.Generator().manual_seed(0)
    shapes = unet_shapes(model)
    # trainable, as EMAModel averages only those (it copies the rest)
    weights = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    averages = {
        style: EMAModel(weights, decay=DECAY, foreach=flag) for style, flag in STYLES.items()
    }
    arms = {style: update_of(average, weights) for style, average in averages.items()}
    results = {k: v[warmup:] for k, v in interleave(arms, repeats + warmup).items()}
    return {
        "tensors": len(shapes),
        "parameters_millions": sum(s.numel() for s in shapes) / 1e6,
        "figures": summarize(results),
        "ratio foreach / per_tensor": paired_ratio(results, "foreach", "per_tensor"),
        "max_abs_diff": largest_difference(averages, weights),
    }


@torch.no_grad()
def largest_difference(averages: dict[str, EMAModel], weights: list[torch.Tensor]) -> float:
    """Both averages restarted from the weights and moved along the same drifting weights:
    the largest difference between them after a few updates."""
    generator = torch.Generator().manual_seed(1)
    for average in averages.values():
        average.shadow_params = [w.detach().clone() for w in weights]
    for _ in range(DRIFT_UPDATES):
        for w in weights:
            w.add_(torch.randn(w.shape, generator=generator), alpha=0.01)
        for average in averages.values():
            average.step(weights)
    shadows = [average.shadow_params for average in averages.values()]
    return max(float((a - b).abs().max()) for a, b in zip(*shadows, strict=True))


def run(quick: bool = False) -> dict[str, Any]:
    """The tiny UNet always; SD 1.5's shapes on full runs (about 10 GB of float32 copies)."""
    setup_torch()
    models = ("tiny",) if quick else ("tiny", "sd15")
    repeats, warmup = (3, 1) if quick else (12, 2)
    compared = {model: compare(model, repeats, warmup) for model in models}
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "decay": DECAY,
            "dtype": "float32",
            "threads": 1,
            "repeats": repeats,
            "warmup_repeats": warmup,
            "interleaving": "both arms each repeat, order reversed every other repeat",
        },
        "unit": "seconds per update (median after warm-up)",
        "models": compared,
        "target": "informational: whether the foreach update is worth its memory",
        "met": None,
        "ratio": {
            f"foreach / per_tensor, {model} UNet": figures["ratio foreach / per_tensor"]
            for model, figures in compared.items()
        },
    }
