"""Contrastive caption-image pretraining of a text encoder (CLIP's objective, on latents).

A web-trained base gets a text encoder that already separates "red hair" from "blue hair"
(CLIP). The tiny base trains its own from scratch; this objective gives it that separation
before the UNet learns to use it: a small CNN embeds a scene's VAE latents, the text encoder
embeds its caption, and a symmetric InfoNCE loss pulls each pair together against the rest
of the batch. The heads here are discarded afterwards; only the text encoder is kept.
`train_text_encoder` is the tiny base's stage 1c (`ymn.model.tiny_base --text-steps`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPTextModel

from ymn.data.tokenizer import tokenize
from ymn.model.components import Components, tiny_text_encoder
from ymn.model.stage_training import (
    StageCheckpoint,
    derived_seed,
    mean_of_last,
    module_device,
    module_weights,
    run_stage,
    step_generator,
)
from ymn.model.tiny_base_data import base_caption

EMBED_DIM = 64
INITIAL_TEMPERATURE = 0.07  # CLIP's
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp

TEXT_STAGE = "stage1c_text"  # stage 1c's checkpoint name in a work folder


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


@dataclass(frozen=True)
class TextStage:
    """Stage 1c's settings (`ymn.model.tiny_base`'s `--text-*` flags, seed, work folder)."""

    work: Path
    seed: int
    steps: int
    batch: int
    lr: float
    save_every: int


def load_text_stage(work: Path) -> tuple[CLIPTextModel, ContrastiveHeads]:
    """The text encoder and heads of a (possibly unfinished) stage-1c checkpoint in `work`,
    in eval mode."""
    tensors = load_file(Path(work) / f"{TEXT_STAGE}.safetensors")
    text_encoder = tiny_text_encoder()
    heads = ContrastiveHeads(text_encoder.config.hidden_size)
    for name, module in (("text_encoder", text_encoder), ("heads", heads)):
        module.load_state_dict(module_weights(tensors, name))
    return text_encoder.eval(), heads.eval()


def train_text_encoder(
    components: Components,
    latents: tuple[torch.Tensor, torch.Tensor],
    metas: list[dict],
    stage: TextStage,
) -> dict[str, float]:
    """Stage 1c: symmetric InfoNCE between each scene's caption and its latents; returns the
    mean loss and in-batch retrieval accuracy of the last 50 steps ({} when off)."""
    if stage.steps <= 0:
        return {}
    mean, std = latents
    scale = components.vae.config.scaling_factor
    text_encoder = components.text_encoder
    with torch.random.fork_rng():  # the heads' init leaves the global stream as it was
        torch.manual_seed(derived_seed(stage.seed, 6))
        heads = ContrastiveHeads(text_encoder.config.hidden_size, mean.shape[1])
    device = module_device(text_encoder)
    heads.to(device)
    eos = text_encoder.config.eos_token_id

    def loss_of_step(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(stage.seed, 5, step)
        caption_rng = random.Random(derived_seed(stage.seed, 7, step))
        idx = torch.randperm(mean.shape[0], generator=generator)[: stage.batch]
        eps = torch.randn(mean[idx].shape, generator=generator)
        z = ((mean[idx] + std[idx] * eps) * scale).to(device)
        captions = [base_caption(metas[i], caption_rng, 0.0) for i in idx.tolist()]
        input_ids = tokenize(components.tokenizer, captions).to(device)
        text = heads.text_projection(caption_embedding(text_encoder(input_ids)[0], input_ids, eos))
        return contrastive_loss(text, heads.image_tower(z), heads.logit_scale)

    text_encoder.train()
    checkpoint = StageCheckpoint(
        stage.work, TEXT_STAGE, {"text_encoder": text_encoder, "heads": heads}
    )
    params = [*text_encoder.parameters(), *heads.parameters()]
    history = run_stage(
        "stage 1c: text encoder (contrastive)", checkpoint, params, loss_of_step,
        stage.steps, stage.lr, 1e-2, stage.save_every,
    )  # fmt: skip
    text_encoder.eval()
    return mean_of_last(history)
