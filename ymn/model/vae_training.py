"""Stage 1 of the tiny base: the VAE's loss and its face-centred training crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1], as SD's VAE expects."""
    return images.float() / 127.5 - 1.0


def gradient_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences: keeps edges sharp."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(recon), dx(target)) + F.l1_loss(dy(recon), dy(target))


def colour_balanced_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 averaged per distinct target colour, then over colours: every colour of a flat-
    coloured batch weighs the same, however few pixels it covers.

    Plain L1 is dominated by the big regions (skin, sky); a hair colour that borders skin on
    every face can then be blended into skin at little cost, and the probes read exactly those
    colours (`identify_character`) and that boundary (the face detector).
    """
    codes = ((target.detach() + 1.0) * 127.5).round().long()
    colour = (codes[:, 0] * 65536 + codes[:, 1] * 256 + codes[:, 2]).flatten()
    error = (recon - target).abs().mean(dim=1).flatten()
    _, index = torch.unique(colour, return_inverse=True)
    n_colours = int(index.max()) + 1
    sums = torch.zeros(n_colours, dtype=error.dtype, device=error.device).index_add(0, index, error)
    counts = torch.bincount(index, minlength=n_colours).to(error.dtype)
    return (sums / counts).mean()


def vae_loss(
    vae: AutoencoderKL,
    x: torch.Tensor,
    kl_weight: float,
    generator: torch.Generator,
    colour_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + gradient L1 + colour_weight * colour-balanced L1) + kl_weight * KL
    of one batch in [-1, 1]."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    l1 = F.l1_loss(recon, x)
    grad = gradient_l1(recon, x)
    kl = posterior.kl().mean()
    loss = l1 + grad + kl_weight * kl
    stats = {"l1": l1.item(), "grad": grad.item(), "kl": kl.item()}
    if colour_weight > 0:
        colour = colour_balanced_l1(recon, x)
        loss = loss + colour_weight * colour
        stats["balanced_l1"] = colour.item()
    return loss, stats


def face_centres(metas: list[dict], size: int) -> list[list[tuple[float, float]]]:
    """Each image's face centres in pixels (y, x), from its `facepos` boxes."""
    return [
        [
            ((top + bot) / 2 * size, (lft + rgt) / 2 * size)
            for lft, top, rgt, bot in meta.get("facepos") or []
        ]
        for meta in metas
    ]


def crop_offsets(
    idx: list[int],
    size: int,
    crop: int,
    generator: torch.Generator,
    centres: list[list[tuple[float, float]]] | None,
    face_share: float,
) -> list[tuple[int, int]]:
    """(y, x) of each crop: uniform, or (share face_share) around one of the image's faces.

    Faces are small and what the probes read (count, the hair and outfit colours around a
    face); centring crops on them spends the VAE's training where its errors cost most.
    """
    uniform = torch.randint(0, size - crop + 1, (len(idx), 2), generator=generator).tolist()
    coin = torch.rand(len(idx), generator=generator).tolist()
    pick = torch.rand(len(idx), generator=generator).tolist()
    jitter = (torch.rand(len(idx), 2, generator=generator) - 0.5).mul(crop / 2).tolist()
    offsets = []
    for k, i in enumerate(idx):
        faces = centres[i] if centres is not None else []
        if faces and coin[k] < face_share:
            cy, cx = faces[int(pick[k] * len(faces))]
            y, x = cy - crop / 2 + jitter[k][0], cx - crop / 2 + jitter[k][1]
            uniform[k] = [min(max(int(y), 0), size - crop), min(max(int(x), 0), size - crop)]
        offsets.append((uniform[k][0], uniform[k][1]))
    return offsets


def random_crops(
    images: torch.Tensor,
    batch: int,
    crop: int,
    generator: torch.Generator,
    centres: list[list[tuple[float, float]]] | None = None,
    face_share: float = 0.0,
) -> torch.Tensor:
    """A batch of random images, each cropped to crop x crop (0: the full image)."""
    idx = torch.randint(0, images.shape[0], (batch,), generator=generator)
    picked = images[idx]
    size = images.shape[-1]
    if crop <= 0 or crop >= size:
        return to_pixels(picked)
    offsets = crop_offsets(idx.tolist(), size, crop, generator, centres, face_share)
    crops = [
        img[:, y : y + crop, x : x + crop] for img, (y, x) in zip(picked, offsets, strict=True)
    ]
    return to_pixels(torch.stack(crops))
