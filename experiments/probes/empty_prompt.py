"""Empty-prompt samples of a model: images the prompt did not ask for anything in.

Scored against the probe records, they show what the probe metrics read when the image is
unrelated to the request (a negative control that goes through the model and the sampler).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler
from PIL import Image

from ymn.model.components import Components, components_pipeline, vae_downsampling


@torch.no_grad()
def empty_prompt_samples(
    components: Components, seeds: Sequence[int], steps: int = 10, size: int | None = None
) -> list[Image.Image]:
    """One DDIM sample of the empty prompt per seed (no guidance: the prompt is empty)."""
    sampler = DDIMScheduler.from_config(components.scheduler.config, set_alpha_to_one=False)
    pipe = components_pipeline(components, scheduler=sampler)
    pipe.set_progress_bar_config(disable=True)
    side = size or components.unet.config.sample_size * vae_downsampling(components.vae)
    images = []
    for seed in seeds:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        out = pipe(
            "",
            height=side,
            width=side,
            num_inference_steps=steps,
            guidance_scale=1.0,
            generator=generator,
        )
        images.append(out.images[0])
    return images
