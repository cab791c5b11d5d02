"""Export: a diffusers folder (and, with `ymn.model.single_file`, an SD 1.x single file)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from ymn.model.components import Components
from ymn.model.tokenizer import save_tokenizer

log = logging.getLogger(__name__)


def components_pipeline(components: Components) -> StableDiffusionPipeline:
    """A pipeline over the given modules (no copies), without a safety checker."""
    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_diffusers(components: Components, folder: Path, dtype: torch.dtype | None = None) -> Path:
    """Write a diffusers folder (safetensors; tokenizer with vocab.json and merges.txt)."""
    folder = Path(folder)
    pipe = components_pipeline(components)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(components.tokenizer, folder / "tokenizer")
    if dtype is not None:
        pipe.to(dtype=torch.float32)
    return folder


def export_run(module: torch.nn.Module, out_dir: Path) -> list[Path]:
    """What every phase writes at its end: `out_dir/diffusers` (+ the single file when available)."""
    return [save_diffusers(module.components(), Path(out_dir) / "diffusers")]
