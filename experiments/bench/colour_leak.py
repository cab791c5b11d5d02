"""colour_leak: does a base read a one-person scene's look from the noise instead of its text?

Fresh one-person scenes (the seed `embedded_world` uses). Each scene's latent is noised to
timestep t, the base predicts the clean latent with an *empty* caption, the prediction is
decoded, and `identify_character` is asked around the scene's true face box. Under SD's
schedule t = 999 still carries signal (sqrt(alpha_bar) = 0.069), and the mean of a large region
survives it; if the look can be read back from the noise at high t, training never needs the
caption for it, while sampling starts from noise that holds no look. The second reading is what
the sampler's first step gets: the prediction from pure noise with the scene's own tags.

    python -m experiments.bench.colour_leak [--model DIR] [--stage2 WORK] [--n 100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from experiments.bench.common import setup_torch
from experiments.bench.embedded_world import (
    FRESH_SEED,
    eval_mode,
    fresh_scenes,
    own_tags,
    scene_latents,
)
from experiments.probes.vae_ceiling import decoded_images
from ymn.data.tokenizer import tokenize
from ymn.model.components import Components, load_components, tiny_base_path
from ymn.model.tiny_base_data import base_caption_tags
from ymn.probes.identity import identify_character
from ymn.probes.rates import rate

LEAK_TIMESTEPS = (999, 900, 700, 500)


def predicted_clean(
    components: Components, noisy: torch.Tensor, t: int, captions: list[str]
) -> torch.Tensor:
    """The base's estimate of the clean (scaled) latent from `noisy` at timestep t."""
    scheduler = components.scheduler
    ids = tokenize(components.tokenizer, captions)
    text = components.text_encoder(ids)[0]
    timesteps = torch.full((noisy.shape[0],), t)
    out = components.unet(noisy, timesteps, text).sample
    alpha_bar = scheduler.alphas_cumprod[t].to(noisy.dtype)
    if scheduler.config.prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * out
    return (noisy - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()


def decode(components: Components, latents: torch.Tensor) -> list[Image.Image]:
    """Scaled latents → RGB images."""
    return decoded_images(components.vae, latents / components.vae.config.scaling_factor)


def look_hits(images: list[Image.Image], metas: list[dict]) -> np.ndarray:
    """Per image: `identify_character` around the scene's true face box names its character."""
    return np.array(
        [
            identify_character(image, meta["facepos"][0]) == meta["characters"][0]
            for image, meta in zip(images, metas, strict=True)
        ]
    )


@torch.no_grad()
def colour_leak(
    components: Components, n: int, seed: int = 0, caption_tags: str = "hair"
) -> dict[str, Any]:
    """The look read back from noised scenes without a caption (per timestep), and from pure
    noise with the scene's own tags (in the base's tag set `caption_tags`); each a Wilson-CI
    rate over n scenes."""
    eval_mode(components)
    scenes = fresh_scenes(n, one_person=True, caption_tags=caption_tags)
    metas = [meta for _, meta in scenes]
    z = scene_latents(components, scenes)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(z.shape, generator=generator)
    no_caption = {}
    for t in LEAK_TIMESTEPS:
        noisy = components.scheduler.add_noise(z, noise, torch.full((n,), t))
        clean = predicted_clean(components, noisy, t, [""] * n)
        hits = look_hits(decode(components, clean), metas)
        no_caption[str(t)] = rate(int(hits.sum()), n)
    first = LEAK_TIMESTEPS[0]
    from_noise = {
        name: look_hits(decode(components, predicted_clean(components, noise, first, texts)), metas)
        for name, texts in (("own_tags", [own_tags(m) for m in metas]), ("empty", [""] * n))
    }
    return {
        "fresh_seed": FRESH_SEED,
        "n_scenes": n,
        "look_from_noised_scene_without_caption": no_caption,
        f"look_from_pure_noise_at_t{first}": {
            name: rate(int(hits.sum()), n) for name, hits in from_noise.items()
        },
        "terminal_alpha_bar": float(components.scheduler.alphas_cumprod[-1]),
        "prediction_type": components.scheduler.config.prediction_type,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: shipped base)")
    parser.add_argument(
        "--stage2", type=Path, help="a tiny_base --work folder's stage-2 checkpoint instead"
    )
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args(argv)
    setup_torch()
    components = load_components("tiny", pretrained=args.model)
    result: dict[str, Any] = {}
    if args.stage2 is not None:
        from ymn.model.tiny_base import load_stage2_weights

        result["stage2_step"] = load_stage2_weights(components, args.stage2)
    tags = base_caption_tags(args.stage2 or tiny_base_path(args.model))
    result.update(colour_leak(components, args.n, caption_tags=tags), caption_tags=tags)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
