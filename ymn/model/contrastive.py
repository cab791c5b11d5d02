"""Contrastive caption-image pretraining of a text encoder (CLIP's objective, on latents).

A web-trained base gets a text encoder that already separates "red hair" from "blue hair"
(CLIP). The tiny base trains its own from scratch; this objective gives it that separation
before the UNet learns to use it: a small CNN embeds a scene's VAE latents, the text encoder
embeds its caption, and a symmetric InfoNCE loss pulls each pair together against the rest
of the batch. The heads here are discarded afterwards; only the text encoder is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 64
INITIAL_TEMPERATURE = 0.07  # CLIP's
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp


class LatentImageTower(nn.Module):
    """Latents (B, C, H, W) → one embedding each: strided convs, then a global mean."""

    def __init__(self, in_channels: int = 4, width: int = 64, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        self.project = nn.Linear(2 * width, dim)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.project(self.body(latents).mean(dim=(2, 3)))


class ContrastiveHeads(nn.Module):
    """What the objective trains besides the text encoder: image tower, text projection and
    the learned temperature."""

    def __init__(self, text_width: int, latent_channels: int = 4) -> None:
        super().__init__()
        self.image_tower = LatentImageTower(latent_channels)
        self.text_projection = nn.Linear(text_width, EMBED_DIM, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / INITIAL_TEMPERATURE).log())


def caption_embedding(hidden: torch.Tensor, input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Mean of the hidden states from BOS up to the first EOS (padding excluded).

    A mean, not CLIP's EOS state, so every token's output (what the UNet's cross-attention
    reads) is trained, not only the last one's.
    """
    is_eos = input_ids == eos_id
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), input_ids.shape[1] - 1)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    mask = (positions[None, :] <= first_eos[:, None]).to(hidden.dtype)
    return (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)


def contrastive_loss(
    text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE over the batch (pair i is the positive of row and column i), and the
    share of captions whose own image is their nearest (chance: 1 / batch)."""
    text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    logits = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * text @ image.T
    target = torch.arange(text.shape[0], device=text.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    accuracy = float((logits.argmax(dim=1) == target).float().mean())
    return loss, {"retrieval": accuracy}
