"""The LightningModule: SD 1.x fine-tuning (VAE frozen, text encoder + UNet trained).

The module owns *how* to train, validate and sample; callbacks decide *when* to sample or probe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.training_utils import EMAModel, compute_snr
from lightning import LightningModule
from PIL import Image

from ymn.data.batch import Batch
from ymn.data.tokenizer import describe_tokens, set_max_token_length, tokenize
from ymn.model.adapters import LoraAdapter
from ymn.model.components import Components, components_pipeline, vae_downsampling
from ymn.model.face_weighted_loss import face_weight_maps
from ymn.model.grouped_loss import GroupedLoss
from ymn.model.loss_scale import weighted_mean
from ymn.model.text_encoder_controls import TextEncoderControls, prompt_inputs
from ymn.model.timesteps import TimestepBias
from ymn.reliability.faults import LossGuard
from ymn.reliability.rng import step_rng

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class AuxiliaryLoss(Protocol):
    """An extra training loss (e.g. a remedy): attached once, evaluated after each UNet forward."""

    def attach(self, module: DiffusionModule) -> None: ...

    def __call__(self, batch: Batch) -> torch.Tensor: ...


SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class DiffusionModule(LightningModule):
    """Fine-tunes the UNet (and, by default, the text encoder) of an SD 1.x model set."""

    def __init__(
        self,
        components: Components,
        optimizer: OptimizerFactory,
        lr_scheduler: SchedulerFactory | None = None,
        train_text_encoder: bool = True,
        gradient_checkpointing: bool = False,
        snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        ema_decay: float | None = None,
        ema_foreach: bool = False,
        val_seed: int = 1234,
        losses: Mapping[str, AuxiliaryLoss] | None = None,
        timesteps: TimestepBias | Mapping[str, Any] | None = None,
        text_encoder_controls: TextEncoderControls | Mapping[str, Any] | None = None,
        face_loss_weight: float = 1.0,
        adapter: LoraAdapter | None = None,
        max_token_length: int = 77,
        loss_guard: LossGuard | None = None,
    ) -> None:
        super().__init__()
        self.vae = components.vae.requires_grad_(False).eval()
        self.text_encoder = components.text_encoder.requires_grad_(train_text_encoder)
        self.text_controls = (
            text_encoder_controls
            if isinstance(text_encoder_controls, TextEncoderControls)
            else TextEncoderControls(**(text_encoder_controls or {}))
        )
        self.adapter = adapter
        if adapter is not None:  # before the freeze: frozen text-encoder layers keep LoRA still
            adapter.attach(components.unet, self.text_encoder if train_text_encoder else None)
        self.text_controls.freeze(self.text_encoder)
        self.unet = components.unet
        self.tokenizer = components.tokenizer
        set_max_token_length(self.tokenizer, max_token_length)  # > 77: 75-token chunks
        self.noise_scheduler = components.scheduler
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.train_text_encoder = train_text_encoder
        self.snr_gamma = snr_gamma
        self.noise_offset = noise_offset
        self.val_seed = val_seed
        self.face_loss_weight = face_loss_weight
        self.val_groups = GroupedLoss()
        self.timestep_bias = (
            timesteps if isinstance(timesteps, TimestepBias) else TimestepBias(**(timesteps or {}))
        )
        self.ema = (
            EMAModel(self.unet.parameters(), decay=ema_decay, foreach=ema_foreach)
            if ema_decay
            else None
        )
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()
        self._batch_started_at: float | None = None
        # The seed of per-step training randomness (ymn.train seeds everything first).
        self.train_seed = int(torch.initial_seed())
        self.loss_guard = loss_guard  # NaN/inf losses: skipped or stopped (root `faults` node)
        self.aux_losses = dict(losses or {})
        for aux in self.aux_losses.values():
            aux.attach(self)

    # -----------------------------------------------------------------------------------------
    # Loss
    # -----------------------------------------------------------------------------------------

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] → scaled VAE latents (a posterior sample, as SD training does)."""
        return self.vae.encode(pixel_values).latent_dist.sample() * self.latent_scale

    def batch_latents(self, batch: Batch) -> torch.Tensor:
        if "latents" in batch:  # cached latents, already scaled
            return batch["latents"]
        return self.encode_images(batch["pixel_values"])

    def batch_input_ids(self, batch: Batch) -> torch.Tensor:
        if "input_ids" in batch:
            return batch["input_ids"]
        return tokenize(self.tokenizer, list(batch["captions"])).to(self.device)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The UNet's text conditioning (the layer `text_encoder_controls.clip_skip` picks)."""
        return self.text_controls.encode(self.text_encoder, input_ids)

    def diffusion_loss(
        self,
        latents: torch.Tensor,
        input_ids: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample MSE of the UNet prediction (epsilon or v), optionally min-SNR weighted;
        `weight` (B, 1, h, w) weighs latent pixels (the face-weighted loss)."""
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        text = self.encode_text(input_ids)
        pred = self.unet(noisy, timesteps, text).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
        if weight is not None:
            loss = loss * weight.to(loss.device)
        loss = loss.mean(dim=(1, 2, 3))
        if self.snr_gamma is not None:
            loss = loss * self.min_snr_weights(timesteps)
        return loss

    def min_snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma loss weights (Hang et al. 2023), for epsilon or v targets."""
        snr = compute_snr(self.noise_scheduler, timesteps)
        clipped = torch.clamp(snr, max=self.snr_gamma)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr

    def sample_noise(self, latents: torch.Tensor, generator: torch.Generator | None = None):
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        if self.noise_offset:
            offset = torch.randn(
                (*latents.shape[:2], 1, 1), generator=generator, device=latents.device
            )
            noise = noise + self.noise_offset * offset
        return noise

    # -----------------------------------------------------------------------------------------
    # Lightning hooks
    # -----------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        log.info(
            "Control tokens as the tokenizer splits them:\n%s", describe_tokens(self.tokenizer)
        )

    def on_train_start(self) -> None:
        # from_pretrained leaves modules in eval mode and Lightning keeps per-module modes.
        self.unet.train()
        self.text_encoder.train(self.train_text_encoder)
        self.vae.eval()

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._batch_started_at = time.perf_counter()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        """Noise, timesteps, VAE samples and dropout are seeded by (seed, epoch, batch): a resumed
        run draws exactly what the uninterrupted run drew. None (no update) for a skipped step."""
        with step_rng(self.device, *self.step_seed_parts(batch_idx)):
            loss = self._training_loss(batch)
        if self.loss_guard is not None:
            loss = self.loss_guard.check(self, loss, batch)
            self.log("train/nan_skipped", float(self.loss_guard.skipped))
        return loss

    def step_seed_parts(self, batch_idx: int) -> tuple[int, ...]:
        """What seeds a training step: (seed, epoch, batch), plus the rank on DDP ranks > 0, so
        every rank draws its own noise while rank 0 keeps the single-process stream."""
        rank = (self.global_rank,) if self.global_rank else ()
        return (self.train_seed, self.current_epoch, batch_idx, *rank)

    def _training_loss(self, batch: Batch) -> torch.Tensor:
        latents = self.batch_latents(batch)
        noise = self.sample_noise(latents)
        timesteps = self.timestep_bias.sample(
            latents.shape[0], self.noise_scheduler.config.num_train_timesteps, latents.device
        )
        weight = self.face_weights(batch, latents)
        ids = self.batch_input_ids(batch)
        per_sample = self.diffusion_loss(latents, ids, noise, timesteps, weight)
        loss = weighted_mean(self, batch, per_sample)  # per-category loss weights (1: mean)
        self.log("train/loss", loss, prog_bar=True, batch_size=latents.shape[0])
        for name, aux in self.aux_losses.items():
            value = aux(batch)
            self.log(f"train/{name}", value, batch_size=latents.shape[0])
            loss = loss + value
        groups = self.optimizers().param_groups
        self.log("lr", groups[0]["lr"], batch_size=latents.shape[0])
        if len(groups) > 1:
            self.log("lr/text_encoder", groups[1]["lr"], batch_size=latents.shape[0])
        return loss

    def face_weights(self, batch: Batch, latents: torch.Tensor) -> torch.Tensor | None:
        """The face-weighted loss's maps (None when `face_loss_weight` is 1, the recipe)."""
        if self.face_loss_weight == 1.0:
            return None
        if "meta" not in batch:
            raise KeyError("model.face_loss_weight needs face boxes: the batch carries no 'meta'")
        height, width = latents.shape[-2:]
        return face_weight_maps(batch["meta"], height, width, self.face_loss_weight)

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.ema is not None and outputs is not None:  # None: a skipped (non-finite) step
            self.ema.step(self.unet.parameters())
        if self._batch_started_at is not None:
            seconds = time.perf_counter() - self._batch_started_at
            n = len(batch["captions"]) if "captions" in batch else batch["latents"].shape[0]
            self.log("perf/images_per_sec", n / max(seconds, 1e-9), batch_size=n)

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """val/loss with noise and timesteps fixed per batch index: runs compare like for like."""
        with step_rng(self.device, self.val_seed, "val", batch_idx):  # the VAE posterior sample
            latents = self.batch_latents(batch)
        generator = torch.Generator(device=latents.device).manual_seed(self.val_seed + batch_idx)
        noise = self.sample_noise(latents, generator)
        timesteps = torch.randint(
            0,
            self.noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=generator,
            device=latents.device,
        )
        per_sample = self.diffusion_loss(latents, self.batch_input_ids(batch), noise, timesteps)
        loss = per_sample.mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=latents.shape[0], sync_dist=True)
        self.val_groups.add(batch.get("meta"), per_sample)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_groups.reset()

    def on_validation_epoch_end(self) -> None:
        """val/loss per top-level category and per number of people (ED2's per-subject val)."""
        for name, value in self.val_groups.means().items():
            self.log(f"val/loss/{name}", value, rank_zero_only=True)

    def optimizer_params(self) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
        """One flat list, or UNet / text-encoder groups when the text encoder has its own lr."""
        if self.text_controls.lr is None or not self.train_text_encoder:
            return self.trainable_parameters()
        unet = [p for p in self.unet.parameters() if p.requires_grad]
        text = [p for p in self.text_encoder.parameters() if p.requires_grad]
        return self.text_controls.param_groups(unet, text)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.unet.parameters())
        if self.train_text_encoder:
            params += list(self.text_encoder.parameters())
        return [p for p in params if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_params())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        checkpoint["ymn"] = {"train_seed": self.train_seed}
        if self.loss_guard is not None:
            checkpoint["ymn"]["loss_guard"] = self.loss_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        saved = checkpoint.get("ymn", {})
        self.train_seed = int(saved.get("train_seed", self.train_seed))
        if self.loss_guard is not None and "loss_guard" in saved:
            self.loss_guard.load_state_dict(saved["loss_guard"])

    # -----------------------------------------------------------------------------------------
    # Sampling (callbacks and probes call these; they decide when)
    # -----------------------------------------------------------------------------------------

    def components(self) -> Components:
        return Components(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.noise_scheduler,
        )

    def make_pipeline(self) -> StableDiffusionPipeline:
        """An inference pipeline over the live modules (no copies), with a DDIM sampler."""
        sampler = DDIMScheduler.from_config(self.noise_scheduler.config, set_alpha_to_one=False)
        pipe = components_pipeline(self.components(), scheduler=sampler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    @torch.no_grad()
    def prompt_inputs(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | None
    ) -> dict[str, Any]:
        """Pipeline text inputs: the prompts, or (CLIP skip, captions over 77 tokens) our own
        embeddings of them, encoded as in training."""
        tokenizer, controls = self.tokenizer, self.text_controls
        return prompt_inputs(controls, self.text_encoder, tokenizer, prompts, negative_prompts)

    def log_images(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        size: tuple[int, int] | None = None,
        steps: int = 20,
        guidance_scale: float = 5.0,
        negative_prompts: Sequence[str] | None = None,
        latents: torch.Tensor | None = None,
    ) -> list[Image.Image]:
        """Sample one image per (prompt, seed) in one batched pipeline call; restores train mode
        afterwards. Each image draws its noise from its own seeded generator, so it does not
        depend on the other prompts of the call (callers choose the batch size)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"log_images: {len(prompts)} prompts but {len(seeds)} seeds")
        was_training = self.training
        self.eval()
        side = self.unet.config.sample_size * vae_downsampling(self.vae)
        width, height = size or (side, side)
        out = self.make_pipeline()(
            **self.prompt_inputs(prompts, negative_prompts),
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds],
            latents=latents,
        )
        self.train(was_training)
        return list(out.images)
