"""Count-aware initial noise: N Gaussian bumps in the starting latent of an N-people prompt.

Published work found that the number of objects a diffusion model draws is set mostly by the
initial noise; a layout prior placed in it raised counting accuracy a lot on a simple benchmark.
This is the simplest such prior: the usual N(0, 1) noise plus `amplitude` times a map of N
Gaussian bumps (one per requested person, at the requested face-grid cells when given, else
spread over the image), added to every latent channel, then each channel renormalised to mean 0
and std 1, so the sampler sees noise with the statistics it expects and the compute (steps,
guidance) is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Centre = tuple[float, float]  # (x, y) as fractions of the width and height


def spread_centres(n: int) -> list[Centre]:
    """n centres in rows of at most 3, rows evenly spaced, faces evenly spaced in each row."""
    if n < 1:
        raise ValueError(f"count_noise_prior needs n >= 1 people, got {n}")
    n_rows = math.ceil(n / 3)
    per_row = [n // n_rows + (1 if r < n % n_rows else 0) for r in range(n_rows)]
    centres = []
    for row, count in enumerate(per_row):
        y = (row + 0.5) / n_rows
        centres += [((k + 0.5) / count, y) for k in range(count)]
    return centres


def cell_centres(cells: Sequence[Sequence[int]], grid: int) -> list[Centre]:
    """Centres of (col, row) cells of a grid x grid layout."""
    return [((int(c) + 0.5) / grid, (int(r) + 0.5) / grid) for c, r in cells]


def blob_map(
    centres: Sequence[Centre], height: int, width: int, sigma: float, device: torch.device | None
) -> torch.Tensor:
    """[height, width] sum of unit-height Gaussian bumps of std `sigma` latent pixels."""
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :] + 0.5
    total = torch.zeros(height, width, device=device)
    for cx, cy in centres:
        dist2 = (xs - cx * width) ** 2 + (ys - cy * height) ** 2
        total = total + torch.exp(-dist2 / (2 * sigma**2))
    return total


def default_sigma(n: int, height: int, width: int) -> float:
    """Bump std in latent pixels: 0.18 of the spacing of the spread layout (>= 0.6 pixel)."""
    n_rows = math.ceil(n / 3)
    per_row = math.ceil(n / n_rows)
    return max(0.6, 0.18 * min(height / n_rows, width / per_row))


def count_noise_prior(
    n: int,
    latent_shape: Sequence[int],
    generator: torch.Generator | None = None,
    layout: Sequence[Sequence[int]] | None = None,
    *,
    grid: int = 5,
    amplitude: float = 1.5,
    sigma: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Initial latents [*, C, H, W] with n bumps; each channel standardised to mean 0, std 1.

    layout: the (col, row) face-grid cells of the prompt (on a grid x grid layout); when it does
    not name exactly n cells the bumps are spread (`spread_centres`). Same generator seed, same
    tensor.
    """
    shape = tuple(int(s) for s in latent_shape)
    if len(shape) < 3:
        raise ValueError(f"latent_shape must end in (C, H, W), got {shape}")
    height, width = shape[-2:]
    noise = torch.randn(shape, generator=generator, device=device)
    use_cells = layout is not None and len(layout) == n
    centres = cell_centres(layout, grid) if use_cells else spread_centres(n)
    bumps = blob_map(centres, height, width, sigma or default_sigma(n, height, width), noise.device)
    latents = noise + amplitude * bumps
    mean = latents.mean(dim=(-2, -1), keepdim=True)
    std = latents.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
    return (latents - mean) / std
