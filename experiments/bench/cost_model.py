"""cost_model: measured tiny-model step time vs its FLOPs (torch FlopCounterMode), and the same
count for SD 1.5 (real architecture from ymn's bundled configs, on the meta device: no weights,
no download) at 512/640/704, batch 8, projected over the recipe's 40,000 steps on A6000 / A100 /
H100-class peaks at a stated MFU."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench.common import REPO, median, setup_torch

SD15 = REPO / "ymn" / "assets" / "sd15-config"
RECIPE_STEPS, BATCH = 40_000, 8
MFU = 0.35  # assumed model-FLOPs utilisation for SD UNet training in bf16 (typical 0.3-0.45)
# Dense peak FLOP/s (no sparsity), from the vendors' datasheets.
PEAKS = {
    "A6000 fp32 (the recipe: EveryDream1, fp32)": 38.7e12,
    "A6000 bf16 tensor": 154.8e12,
    "A100 bf16 tensor": 312e12,
    "H100 SXM bf16 tensor": 989e12,
}


def step_flops(vae: Any, text_encoder: Any, unet: Any, pixels: torch.Tensor,
               ids: torch.Tensor) -> dict[str, float]:  # fmt: skip
    """FLOPs of one training step by part: VAE encode (no grad), text encoder and UNet forward
    + backward (both trained, as in the recipe)."""
    parts = {}
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    parts["vae_encode"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        text = text_encoder(ids)[0]
        t = torch.zeros(pixels.shape[0], dtype=torch.long, device=pixels.device)
        pred = unet(latents, t, text).sample
        pred.float().pow(2).mean().backward()
    parts["text_encoder_unet_fwd_bwd"] = fc.get_total_flops()
    parts["total"] = sum(parts.values())
    return {k: float(v) for k, v in parts.items()}


def sd15_on_meta() -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15 / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15 / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15 / "text_encoder"))
    return vae, text_encoder, unet


def tiny_measured(steps: int) -> dict[str, Any]:
    """FLOPs and measured seconds of one tiny training step (batch 4 at 128, as train_step)."""
    from experiments.bench.train_step import BATCH as TB
    from experiments.bench.train_step import RES, BareLoop, make_batch
    from ymn.data.tokenizer import load_clip_tokenizer

    batch = make_batch(load_clip_tokenizer())
    loop = BareLoop(batch)
    flops = step_flops(loop.c.vae, loop.c.text_encoder, loop.c.unet, batch["pixel_values"],
                       batch["input_ids"])  # fmt: skip
    loop.opt.zero_grad(set_to_none=True)
    times = [loop.step() for _ in range(steps)][2:]
    seconds = median(times)
    return {"batch": TB, "resolution": RES, "flops": flops, "step_s": seconds,
            "achieved_gflop_per_s": flops["total"] / seconds / 1e9}  # fmt: skip


def run(quick: bool = False) -> dict[str, Any]:
    """Count, measure, project."""
    setup_torch()
    tiny = tiny_measured(5 if quick else 12)
    vae, text_encoder, unet = sd15_on_meta()
    sd15 = {}
    for res in (512, 640, 704):
        pixels = torch.randn(BATCH, 3, res, res, device="meta")
        ids = torch.zeros(BATCH, 77, dtype=torch.long, device="meta")
        flops = step_flops(vae, text_encoder, unet, pixels, ids)
        projection = {}
        for name, peak in PEAKS.items():
            step_s = flops["total"] / (peak * MFU)
            projection[name] = {"step_s": step_s, "images_per_s": BATCH / step_s,
                                "recipe_hours": step_s * RECIPE_STEPS / 3600}  # fmt: skip
        sd15[str(res)] = {"flops": flops, "tflop_per_step": flops["total"] / 1e12,
                          "projection_at_mfu": projection}  # fmt: skip
        flops_no_vae = flops["total"] - flops["vae_encode"]
        sd15[str(res)]["share_of_flops_in_vae_encode"] = flops["vae_encode"] / flops["total"]
        sd15[str(res)]["tflop_per_step_with_cached_latents"] = flops_no_vae / 1e12
    a6000 = sd15["704"]["projection_at_mfu"]["A6000 fp32 (the recipe: EveryDream1, fp32)"]
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "mfu_assumed": MFU,
            "peaks_flop_per_s": PEAKS,
            "batch": BATCH,
            "recipe_steps": RECIPE_STEPS,
            "flop_counter": "torch.utils.flop_counter",
            "sd15": "ymn/assets/sd15-config on the meta device",
        },  # fmt: skip
        "unit": "FLOPs per training step; seconds; hours",
        "figures": {"tiny_measured_cpu": tiny, "sd15": sd15},
        "ratio": {
            "tiny: measured GFLOP/s on this CPU": tiny["achieved_gflop_per_s"],
            "SD1.5 704 / tiny FLOPs per step": sd15["704"]["flops"]["total"]
            / tiny["flops"]["total"],
            "recipe at 704, A6000 fp32 @ MFU, hours (card: ~100)": a6000["recipe_hours"],
        },
        "target": "informational (cost model)",
        "met": None,
    }
