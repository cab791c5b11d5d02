"""Stage 1 of the tiny base (`ymn.model.tiny_base`): the VAE's resumable training stages
(1: autoencoder; 1b: the decoder alone; 1d: the whole VAE with a colour-balanced L1) and the
latent cache stage 2 trains on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from tqdm import tqdm

from ymn.model.components import tiny_vae
from ymn.model.stage_training import (
    StageCheckpoint,
    mean_of_last,
    module_device,
    module_weights,
    run_stage,
    step_generator,
)
from ymn.model.vae_training import face_centres, random_crops, to_pixels, vae_loss

if TYPE_CHECKING:
    from ymn.model.tiny_base import TinyBaseConfig

ENCODE_BATCH = 64
# each VAE stage's checkpoint name in a --work folder, in training (and loading) order
VAE_STAGES = {"stage1": "stage1_vae", "stage1b": "stage1b_decoder", "stage1d": "stage1d_vae"}


def load_stage1_vae(work: Path) -> AutoencoderKL:
    """The VAE of a (possibly unfinished) stage-1 checkpoint in `work`, in eval mode, with the
    decoder of stage 1b and the VAE of stage 1d when `work` holds them (in that order)."""
    vae = tiny_vae()
    for name in VAE_STAGES.values():
        path = Path(work) / f"{name}.safetensors"
        if path.is_file():
            vae.load_state_dict(module_weights(load_file(path), "vae"))
    return vae.eval().requires_grad_(False)


def decoder_parameters(vae: AutoencoderKL) -> list[torch.nn.Parameter]:
    """What stage 1b trains: everything after the latent (post_quant_conv + decoder)."""
    return [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]


def train_vae(
    vae: AutoencoderKL, images: torch.Tensor, metas: list[dict], cfg: TinyBaseConfig
) -> dict[str, float]:
    """Stage 1: fit the VAE as an autoencoder; returns the mean losses of the last 50 steps."""
    return _fit_vae(
        vae, images, metas, cfg, ("stage 1: VAE", VAE_STAGES["stage1"], 1), list(vae.parameters()),
        cfg.vae_steps, cfg.vae_batch, cfg.vae_lr, cfg.kl_weight,
    )  # fmt: skip


def train_colour(
    vae: AutoencoderKL, images: torch.Tensor, metas: list[dict], cfg: TinyBaseConfig
) -> dict[str, float]:
    """Stage 1d: the whole VAE, from stages 1 and 1b, with `cfg.colour_weight` x the colour-
    balanced L1 added (stage 1's encoder blends pink hair into skin); returns the mean losses
    of the last 50 steps. It changes every latent: stages 1c and 2 must come after it."""
    if cfg.colour_steps <= 0:
        return {}
    vae.requires_grad_(True)
    return _fit_vae(
        vae, images, metas, cfg, ("stage 1d: VAE colours", VAE_STAGES["stage1d"], 5),
        list(vae.parameters()), cfg.colour_steps, cfg.vae_batch, cfg.colour_lr, cfg.kl_weight,
        cfg.colour_weight,
    )  # fmt: skip


def train_decoder(
    vae: AutoencoderKL, images: torch.Tensor, metas: list[dict], cfg: TinyBaseConfig
) -> dict[str, float]:
    """Stage 1b: more steps for the decoder alone, the encoder frozen, so every latent (and a
    UNet trained on them) stays valid; returns the mean losses of the last 50 steps."""
    if cfg.decoder_steps <= 0:
        return {}
    vae.requires_grad_(False)
    params = decoder_parameters(vae)
    for param in params:
        param.requires_grad_(True)
    return _fit_vae(
        vae, images, metas, cfg, ("stage 1b: VAE decoder", VAE_STAGES["stage1b"], 4), params,
        cfg.decoder_steps, cfg.decoder_batch, cfg.decoder_lr, 0.0,
    )  # fmt: skip


def _fit_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    metas: list[dict],
    cfg: TinyBaseConfig,
    stage: tuple[str, str, int],
    params: list[torch.nn.Parameter],
    steps: int,
    batch: int,
    lr: float,
    kl_weight: float,
    colour_weight: float = 0.0,
) -> dict[str, float]:
    """One resumable autoencoder stage on face-centred crops; `stage` = (progress-bar name,
    checkpoint name, seed stream). The VAE ends in eval mode, frozen."""
    name, record, stream = stage
    centres = face_centres(metas, images.shape[-1])
    device = module_device(vae)

    def loss_of_step(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(cfg.seed, stream, step)
        x = random_crops(images, batch, cfg.vae_crop, generator, centres, cfg.vae_face_crops)
        return vae_loss(vae, x.to(device), kl_weight, generator, colour_weight)

    vae.train()
    checkpoint = StageCheckpoint(cfg.work, record, {"vae": vae})
    history = run_stage(
        name, checkpoint, params, loss_of_step, steps, lr, 0.0, cfg.save_every
    )  # fmt: skip
    vae.eval().requires_grad_(False)
    return mean_of_last(history)


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (unscaled), in batches, on the CPU."""
    means, stds = [], []
    device = module_device(vae)
    for start in tqdm(range(0, images.shape[0], ENCODE_BATCH), desc="cache latents", unit="batch"):
        batch = to_pixels(images[start : start + ENCODE_BATCH]).to(device)
        dist = vae.encode(batch).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of unscaled latents, so scaled latents have unit variance (SD: 0.18215)."""
    return float(1.0 / latents.float().std())
