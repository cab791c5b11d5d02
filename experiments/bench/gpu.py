"""gpu: SD 1.5's architecture (ymn/assets/sd15-config, random init, no hub) trained on a CUDA device
in bf16 autocast: images/s, MFU and peak memory at 512/640/704, batch 8, for a full fine-tune
(UNet + text encoder, AdamW, as the recipe) and LoRA (kohya's UNet targets, rank 16, text
encoder frozen), each with the VAE encoding every step and with cached latents.

FLOPs are counted on the step itself (torch FlopCounterMode: forward + backward of what runs),
MFU = FLOPs / step time / the device's dense bf16 peak. `make bench` runs it when CUDA is present;
alone: `python -m experiments.bench.gpu` → experiments/bench/gpu.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench.common import BENCH_DIR, REPO, median, setup_torch, write_result
from experiments.bench.cost_model import SD15

RESOLUTIONS, BATCH, LORA_RANK = (512, 640, 704), 8, 16
# Dense bf16 tensor-core peaks (no sparsity), from the vendors' datasheets, by name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
             "A6000": 154.8e12, "4090": 165.2e12}  # fmt: skip


@dataclass(frozen=True)
class Case:
    resolution: int
    mode: str  # "full" | "lora"
    cached_latents: bool


def peak_bf16(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its name, None when unknown (then no MFU)."""
    return next((peak for key, peak in PEAK_BF16.items() if key in device_name), None)


def build_parts(config_dir: Path, device: torch.device) -> tuple[Any, Any, Any]:
    """VAE, text encoder and UNet from their configs, random init, fp32 on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with device:
        unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    return vae.requires_grad_(False).eval(), text_encoder, unet


def make_step(case: Case, parts: tuple[Any, Any, Any], batch: int, device: torch.device
              ) -> Callable[[], None]:  # fmt: skip
    """One training step of `case` as a closure: encode (or cached latents), noise, text, UNet,
    MSE, backward, AdamW."""
    from ymn.model.adapters import LoraAdapter

    vae, text_encoder, unet = parts
    if case.mode == "lora":
        LoraAdapter(rank=LORA_RANK, alpha=LORA_RANK).attach(unet, None)
        text_encoder.requires_grad_(False)
    trained = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-6, fused=device.type == "cuda")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    pixels = torch.rand(batch, 3, case.resolution, case.resolution, device=device) * 2 - 1
    latent_shape = (batch, vae.config.latent_channels, *(2 * [case.resolution // factor]))
    cached = torch.randn(latent_shape, device=device)
    ids = torch.randint(0, text_encoder.config.vocab_size, (batch, 77), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if case.cached_latents:
                latents = cached
            else:
                with torch.no_grad():
                    latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (batch,), device=device)
            noisy = latents + noise * (t.float() / 1000).view(-1, 1, 1, 1)  # cost of add_noise
            with torch.set_grad_enabled(case.mode == "full"):
                text = text_encoder(ids)[0]
            pred = unet(noisy, t, text).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, repeats: int
               ) -> list[float]:  # fmt: skip
    """Seconds per step over `repeats` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure(case: Case, config_dir: Path, batch: int, device: torch.device, warmup: int,
            repeats: int) -> dict[str, Any]:  # fmt: skip
    """One case's figures; an out-of-memory case is recorded as such, not raised."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        step = make_step(case, build_parts(config_dir, device), batch, device)
        step()  # the first step allocates AdamW's state: keep it out of the FLOP count
        with FlopCounterMode(display=False) as counter:
            step()
        seconds = median(time_steps(step, device, warmup, repeats))
    except torch.OutOfMemoryError as error:
        return {**asdict(case), "error": f"out of memory: {str(error)[:200]}"}
    flops = float(counter.get_total_flops())
    peak = peak_bf16(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        **asdict(case),
        "batch": batch,
        "step_s": seconds,
        "images_per_s": batch / seconds,
        "tflop_per_step": flops / 1e12,
        "achieved_tflop_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / peak if peak else None,
        "peak_memory_gib": memory,
    }


def _shown(path: Path) -> str:
    """A path as the JSON may show it: repo-relative, never a local absolute path."""
    full = path.resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else path.name


def _ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    by_case = {(r["resolution"], r["mode"], r["cached_latents"]): r for r in rows}
    top = max(r["resolution"] for r in rows)

    def share(a: tuple, b: tuple) -> float | None:
        x, y = by_case[a].get("images_per_s"), by_case[b].get("images_per_s")
        return x / y if x and y else None

    full_cached = (top, "full", True)
    return {
        f"full fine-tune at {top}: img/s cached / VAE every step": share(
            full_cached, (top, "full", False)
        ),
        f"LoRA / full fine-tune at {top}, cached (img/s)": share((top, "lora", True), full_cached),
        f"MFU, full fine-tune at {top}, cached": by_case[full_cached].get("mfu"),
    }


def run(quick: bool = False, *, config_dir: Path = SD15,
        resolutions: tuple[int, ...] = RESOLUTIONS, batch: int = BATCH,
        device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Every case on `device` (default: the first CUDA device; refuses a CPU-only machine)."""
    setup_torch()
    if device is None and not torch.cuda.is_available():
        raise SystemExit("experiments.bench.gpu needs a CUDA device (none found)")
    target = torch.device(device or "cuda:0")
    warmup, repeats = (1, 3) if quick else (3, 10)
    cases = [Case(r, mode, cached) for r in resolutions for mode in ("full", "lora")
             for cached in (False, True)]  # fmt: skip
    rows = [measure(case, config_dir, batch, target, warmup, repeats) for case in cases]
    return {
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "setup": {
            "config": _shown(config_dir),
            "batch": batch,
            "precision": "bf16 autocast, fp32 weights",
            "lora_rank": LORA_RANK,
            "warmup_steps": warmup,
            "timed_steps": repeats,
            "peaks_bf16": PEAK_BF16,
        },
        "unit": "images/s; TFLOP; GiB",
        "figures": rows,
        "ratio": _ratios(rows),
        "target": "informational: SD 1.5 throughput and MFU on this device",
        "met": None,
    }


def main() -> int:
    print(write_result("gpu", run(), BENCH_DIR))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
