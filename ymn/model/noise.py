"""Training noise with more low-frequency power than i.i.d. Gaussian noise.

Under i.i.d. noise the mean of a large region survives to the last timestep: at t = 999 of
SD's schedule sqrt(alpha_bar) = 0.069, while the noise on the mean of a 300-pixel region has
std 1 / sqrt(300) = 0.058. A model can then read part of a large region's colour (a close-up's
hair) from the noisy latent even at high noise, so it needs the caption less for it
(`experiments.bench.colour_leak`), yet sampling starts from noise that holds no colour.
Pyramid noise (multi-resolution noise, as kohya's `multires_noise`) adds noise at every
coarser scale, so region means are destroyed too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pyramid_noise(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator, discount: float
) -> torch.Tensor:
    """Gaussian noise of `shape` (B, C, H, W) plus bilinearly upsampled noise at H/2, H/4, ...
    down to 1 pixel, scale k weighted by discount**k; each sample renormalised to unit std so
    the schedule's signal-to-noise ratio keeps its meaning. discount 0 gives i.i.d. noise."""
    if not 0.0 <= discount < 1.0:
        raise ValueError(f"pyramid noise discount {discount}: expected 0 <= discount < 1")
    batch, channels, height, width = shape
    noise = torch.randn(shape, generator=generator)
    if discount == 0.0:
        return noise
    level, h, w = 1, height, width
    while h > 1 or w > 1:
        h, w = max(1, h // 2), max(1, w // 2)
        coarse = torch.randn((batch, channels, h, w), generator=generator)
        up = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        noise = noise + up * discount**level
        level += 1
    return noise / noise.std(dim=(1, 2, 3), keepdim=True)
