"""The tiny base's training data: scenes drawn in memory, deterministic per (seed, index),
and the generic captions a general base sees."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from ymn.data.synthetic import KIND_MIX, render_scene, sample_scene_spec


def synthetic_scene(seed: int, index: int, size: int) -> tuple[Image.Image, dict]:
    """One multi-character scene of `ymn.data.synthetic`, drawn as `ymn-synth` draws it."""
    rng = np.random.default_rng([seed, index])
    kinds = list(KIND_MIX)
    kind = kinds[int(rng.choice(len(kinds), p=list(KIND_MIX.values())))]
    return render_scene(sample_scene_spec(rng, kind, size), size)


def procedural_scene(seed: int, index: int, size: int) -> tuple[Image.Image, dict]:
    """Coloured discs ("faces") over rectangles ("bodies") on a vertical gradient."""
    rng = np.random.default_rng([seed, index, 1])
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    n = int(rng.integers(1, 5))
    boxes = []
    for _ in range(n):
        d = rng.uniform(0.12, 0.3) * size
        cx, cy = rng.uniform(d, size - d), rng.uniform(d, size * 0.7)
        body = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle([cx - d * 0.6, cy + d * 0.4, cx + d * 0.6, size], fill=body)
        draw.ellipse([cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2], fill=(250, 220, 190))
        boxes.append([v / size for v in (cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2)])
    meta = {"n_people": n, "characters": [], "facepos": boxes, "tags": ["gradient", "disc"]}
    return image, meta


def make_scenes(data: str, n: int, seed: int, size: int) -> tuple[torch.Tensor, list[dict]]:
    """n scenes as a uint8 tensor (n, 3, size, size) and their metadata."""
    draw = {"synthetic": synthetic_scene, "procedural": procedural_scene}.get(data)
    if draw is None:
        raise ValueError(f"--data {data!r}: expected 'synthetic' or 'procedural'")
    images, metas = [], []
    for index in tqdm(range(n), desc=f"draw {data} scenes", unit="img"):
        image, meta = draw(seed, index, size)
        images.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()))
        metas.append(meta)
    return torch.stack(images).permute(0, 3, 1, 2).contiguous(), metas


def base_caption(meta: dict, rng: random.Random, dropout: float) -> str:
    """A general base's caption: the scene's generic tags, shuffled ("" with p = dropout).

    `meta["tags"]` holds appearance, setting and booru count tags (`1girl`, `solo`); names,
    the `Npeople` token and face-grid tokens live elsewhere in the metadata and are left out.
    """
    if rng.random() < dropout:
        return ""
    tags = list(meta["tags"])
    rng.shuffle(tags)
    return ", ".join(tags)
