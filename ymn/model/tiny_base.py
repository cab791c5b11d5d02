"""Train the tiny pretrained base shipped in `ymn/assets/tiny-base` (`make tiny-base`).

A random VAE turns every sample into noise, so ymn ships a small *pretrained* SD-shaped set
that it trains itself, deterministically (seeded, data generated in memory from the seed):

1. stage 1: the VAE as an autoencoder (L1 + L1 on image gradients + a tiny KL) on random
   crops, then `scaling_factor` = 1 / std of its latents (SD 1.x's 0.18215 plays this role);
   stage 1b (`--decoder-steps`) trains the decoder alone, the encoder frozen, so the latents,
   and any UNet trained on them, stay valid;
   stage 1d (`--colour-steps`) fine-tunes the whole VAE with a colour-balanced
   L1 (every drawn colour weighs the same), so a hair colour is not blended into skin; it
   changes the latents, so stages 1c and 2 must follow it;
   stage 1c (`--text-steps`) pretrains the text encoder contrastively against the cached
   latents (`ymn.model.contrastive`), as a web-trained base's text encoder is;
2. stage 2: text encoder + UNet (`--unet-channels` wide) on the frozen VAE's cached latents,
   v-prediction on SD's scaled-linear DDPM schedule rescaled to zero terminal SNR
   (SD 1.x's own: `--prediction-type epsilon --zero-terminal-snr false`), with caption
   dropout so classifier-free guidance works (`--freeze-text-encoder true` trains the UNet
   alone on stage 1c's encoder; `--snr-gamma` weighs the loss by min-SNR-gamma);
3. save as a float16 diffusers folder without `tokenizer/` (rebuilt offline from openai-clip).

The base is *general*: its captions are the scenes' generic tags only (appearance, setting,
booru counts such as `2girls`), shuffled, with no `Npeople` token, no face-grid tokens and no
character names: those are what the fine-tune must learn, as the card's did. `--caption-tags
distinct-hair` renames the unnamed people's brown (`dark brown hair`), which shares Natsume's
tag; `unshared-hair` names it by a word no roster tag has (`chestnut hair`); `--caption-tags
look` also adds each person's outfit colour (`white shirt`), so a caption describes every look
the identity probe reads.

Each stage saves a checkpoint to `--work` every `--save-every` steps; a rerun with the same
flags continues from it bit for bit (every step's randomness is seeded by (seed, step)).

    python -m ymn.model.tiny_base --out ymn/assets/tiny-base --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ymn.data.tokenizer import load_clip_tokenizer, tokenize
from ymn.model.components import (
    TINY_BASE_DIR,
    TINY_RESOLUTION,
    Components,
    sd_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from ymn.model.contrastive import TEXT_STAGE, TextStage, train_text_encoder
from ymn.model.export import save_diffusers
from ymn.model.module import DiffusionModule
from ymn.model.noise import pyramid_noise
from ymn.model.stage_training import (
    ParameterAverage,
    StageCheckpoint,
    check_average_decay,
    derived_seed,
    mean_of_last,
    module_device,
    module_weights,
    named_trainable,
    run_stage,
    step_generator,
)
from ymn.model.timesteps import TimestepBias
from ymn.model.tiny_base_data import (
    base_caption,
    character_weights,
    check_caption_tags,
    make_scenes,
    record_caption_tags,
)
from ymn.model.vae_stages import (
    encode_all,
    latent_scaling_factor,
    train_colour,
    train_decoder,
    train_vae,
)
from ymn.paths import shareable_path
from ymn.run_record import commit_label

STAGE2_SCHEDULER = "stage2_scheduler.json"  # the noise schedule stage 2 trains under
UNET_STAGE = "stage2_unet"  # stage 2's checkpoint name in a work folder


@dataclass
class TinyBaseConfig:
    """Settings of one tiny-base training run (the CLI flags)."""

    out: Path = TINY_BASE_DIR
    work: Path = Path("runs/tiny-base-work")  # resumable stage checkpoints
    stage: str = "all"  # "all", or "vae": stop after stages 1 and 1b (stage 2 can follow)
    seed: int = 0
    data: str = "synthetic"  # "synthetic" (multi-character scenes) or "procedural" (shapes)
    images: int = 4096
    # whom stages 1c and 2 see: "natural" (the VAE's scenes) or "balanced" (scenes of the same
    # kinds and people counts, every roster look cast equally often; the VAE keeps "natural")
    stage2_characters: str = "natural"
    # the tags stages 1c and 2 caption with (ymn.model.tiny_base_data.CAPTION_TAGS): "hair"
    # (hair colour and style, the shipped base's), "distinct-hair" (the unnamed brown renamed),
    # "unshared-hair" (renamed without the word `brown`) or "look" (outfit colours named too)
    caption_tags: str = "hair"
    vae_steps: int = 6000
    vae_batch: int = 8
    vae_crop: int = 48  # train the (fully convolutional) VAE on crops: 7x cheaper per image
    vae_face_crops: float = 0.5  # share of crops centred on a face
    vae_lr: float = 1.5e-3
    kl_weight: float = 1e-6
    decoder_steps: int = 3000  # stage 1b: the decoder alone (latents, so stage 2, unchanged)
    decoder_batch: int = 32
    decoder_lr: float = 3e-4
    colour_steps: int = 2000  # stage 1d: the whole VAE with the colour-balanced L1 (0: off)
    colour_weight: float = 4.0
    colour_lr: float = 1e-3
    text_steps: int = 2000  # stage 1c: contrastive text-encoder pretraining (0: off)
    text_batch: int = 64
    text_lr: float = 1e-3
    unet_channels: int = 32  # the UNet's first block width (ymn.model.components.tiny_unet)
    unet_steps: int = 3400
    batch: int = 16
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    # stage 2's timestep distribution (ymn.model.timesteps; "uniform" is the shipped base's)
    timestep_bias: str = "uniform"
    timestep_multiplier: float = 2.0
    timestep_portion: float = 0.25
    # stage 2's target and noise (v on a zero-terminal-SNR schedule, i.i.d. noise: the shipped
    # base's)
    prediction_type: str = "v_prediction"  # or "epsilon" (SD 1.x)
    zero_terminal_snr: bool = True  # needs v_prediction (ymn.model.components.sd_scheduler)
    pyramid_discount: float = 0.0  # > 0: multi-resolution noise (ymn.model.noise)
    autocast: str = "bfloat16"  # or "none": stage 2's forward under torch.autocast
    # > 0: stage 2's loss weighted by min-SNR-gamma (Hang et al. 2023; the fine-tune's
    # model.snr_gamma); 0: unweighted (the shipped base's)
    snr_gamma: float = 0.0
    # true: stage 2 trains the UNet alone on stage 1c's text encoder, frozen (as SD 1.x keeps
    # CLIP's); false: both train (the shipped base's)
    freeze_text_encoder: bool = False
    # > 0: stage 2 keeps an exponential moving average of its weights (diffusers' EMAModel
    # rule) and saves the average; 0: the trained weights (the shipped base's)
    ema_decay: float = 0.0
    save_every: int = 200
    threads: int = 1
    device: str = "cpu"  # or "cuda": the same seeded draws (made on the CPU), moved there


# ---------------------------------------------------------------------------------------------
# Stage 2: text encoder + UNet on the frozen VAE's latents
# ---------------------------------------------------------------------------------------------


def load_stage2_weights(components: Components, work: Path, average: bool = False) -> int:
    """Put the text encoder and UNet of a (possibly unfinished) stage-2 checkpoint in `work`
    into `components` (whose VAE must be that run's stage 1), with the noise schedule it was
    trained under and a UNet of the checkpoint's width; with `average`, the checkpoint's
    moving average of them (a run with --ema-decay). Returns the checkpoint's step."""
    scheduler = Path(work) / STAGE2_SCHEDULER
    if scheduler.is_file():
        config = json.loads(scheduler.read_text())
        components.scheduler = type(components.scheduler).from_config(config)
    tensors = load_file(Path(work) / f"{UNET_STAGE}.safetensors")
    channels = int(module_weights(tensors, "unet")["conv_in.weight"].shape[0])
    if channels != components.unet.config.block_out_channels[0]:
        components.unet = tiny_unet(channels)  # a run made with --unet-channels
    if average and not any(key.startswith("average.") for key in tensors):
        raise ValueError(f"{work}: its stage-2 checkpoint keeps no average (no --ema-decay)")
    for name in ("unet", "text_encoder"):
        weights = module_weights(tensors, name)
        if average:  # the averaged parameters over the trained ones; buffers stay
            weights.update(module_weights(tensors, name, kind="average"))
        module = getattr(components, name)
        dtype = next(module.parameters()).dtype
        module.load_state_dict({k: v.to(dtype) for k, v in weights.items()})
    return int(json.loads((Path(work) / f"{UNET_STAGE}.json").read_text())["step"])


def train_unet(
    module: DiffusionModule,
    latents: tuple[torch.Tensor, torch.Tensor],
    metas: list[dict],
    cfg: TinyBaseConfig,
) -> dict[str, float]:
    """Stage 2: epsilon- or v-prediction training (the module's scheduler decides); returns the
    mean loss of the last 50 steps."""
    mean, std = latents
    scale = module.latent_scale
    n_timesteps = module.noise_scheduler.config.num_train_timesteps
    bias = TimestepBias(cfg.timestep_bias, cfg.timestep_multiplier, cfg.timestep_portion)
    device = module_device(module.unet)

    def loss_of_step(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(cfg.seed, 2, step)
        caption_rng = random.Random(derived_seed(cfg.seed, 3, step))
        idx = torch.randint(0, mean.shape[0], (cfg.batch,), generator=generator)
        eps = torch.randn(mean[idx].shape, generator=generator)
        z = (mean[idx] + std[idx] * eps) * scale
        captions = [base_caption(metas[i], caption_rng, cfg.caption_dropout) for i in idx.tolist()]
        noise = pyramid_noise(z.shape, generator, cfg.pyramid_discount)
        timesteps = bias.sample(cfg.batch, n_timesteps, generator=generator)
        input_ids = tokenize(module.tokenizer, captions)
        on_device = (t.to(device) for t in (z, input_ids, noise, timesteps))
        with torch.autocast(device.type, torch.bfloat16, enabled=cfg.autocast == "bfloat16"):
            return module.diffusion_loss(*on_device).mean(), {}

    module.unet.train()
    module.text_encoder.train()
    Path(cfg.work).mkdir(parents=True, exist_ok=True)
    scheduler_config = dict(module.noise_scheduler.config)
    (Path(cfg.work) / STAGE2_SCHEDULER).write_text(json.dumps(scheduler_config, indent=2) + "\n")
    modules = {"unet": module.unet, "text_encoder": module.text_encoder}
    average = ParameterAverage(named_trainable(modules), cfg.ema_decay) if cfg.ema_decay else None
    checkpoint = StageCheckpoint(cfg.work, UNET_STAGE, modules, average)
    history = run_stage(
        "stage 2: text encoder + UNet",
        checkpoint,
        module.trainable_parameters(),
        loss_of_step,
        cfg.unet_steps,
        cfg.unet_lr,
        1e-2,
        cfg.save_every,
    )
    if average is not None:
        average.copy_to_parameters()  # the base saves the average; the checkpoint keeps both
    module.unet.eval()
    module.text_encoder.eval()
    return mean_of_last(history)


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------


def save_base(components: Components, out: Path, info: dict) -> Path:
    """float16 diffusers folder without tokenizer/, plus train_info.json."""
    out = Path(out)
    if out.exists():
        for sub in ("vae", "text_encoder", "unet", "scheduler", "tokenizer"):
            shutil.rmtree(out / sub, ignore_errors=True)
    save_diffusers(components, out, dtype=torch.float16)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)  # rebuilt offline from openai-clip
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def train_tiny_base(cfg: TinyBaseConfig) -> dict:
    """Both stages, then save; returns the run summary written to train_info.json."""
    if cfg.stage not in ("all", "vae"):
        raise ValueError(f"--stage {cfg.stage!r}: expected 'all' or 'vae'")
    if cfg.autocast not in ("none", "bfloat16"):
        raise ValueError(f"--autocast {cfg.autocast!r}: expected 'none' or 'bfloat16'")
    character_weights(cfg.stage2_characters)  # a bad name fails before any training
    check_caption_tags(cfg.caption_tags)
    if cfg.ema_decay:  # 0 is off
        check_average_decay(cfg.ema_decay, "--ema-decay")
    if cfg.snr_gamma < 0:
        raise ValueError(f"--snr-gamma {cfg.snr_gamma}: expected 0 (off) or a positive gamma")
    started = time.perf_counter()
    commit = commit_label()  # the code this run starts with; HEAD may move while it trains
    torch.manual_seed(cfg.seed)
    components = Components(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=load_clip_tokenizer(),
        unet=tiny_unet(cfg.unet_channels),
        scheduler=sd_scheduler(cfg.prediction_type, cfg.zero_terminal_snr),
    )
    for name in ("vae", "text_encoder", "unet"):
        getattr(components, name).to(cfg.device)
    images, metas = make_scenes(
        cfg.data, cfg.images, cfg.seed, TINY_RESOLUTION, caption_tags=cfg.caption_tags
    )
    vae_losses = train_vae(components.vae, images, metas, cfg)
    vae_losses.update(
        {f"decoder_{k}": v for k, v in train_decoder(components.vae, images, metas, cfg).items()}
    )
    vae_losses.update(
        {f"colour_{k}": v for k, v in train_colour(components.vae, images, metas, cfg).items()}
    )
    if cfg.stage == "vae":
        return {"stage": "vae", "vae_final_losses": vae_losses, "work": shareable_path(cfg.work)}
    if cfg.stage2_characters != "natural":
        size, mix = TINY_RESOLUTION, cfg.stage2_characters
        images, metas = make_scenes(cfg.data, cfg.images, cfg.seed, size, mix, cfg.caption_tags)
    record_caption_tags(cfg.work, cfg.caption_tags, text_stages=(TEXT_STAGE, UNET_STAGE))
    latents = encode_all(components.vae, images)
    scaling = latent_scaling_factor(latents[0])
    components.vae.register_to_config(scaling_factor=scaling)
    text_stage = TextStage(
        cfg.work, cfg.seed, cfg.text_steps, cfg.text_batch, cfg.text_lr, cfg.save_every
    )
    text_losses = train_text_encoder(components, latents, metas, text_stage)
    module = DiffusionModule(
        components,
        optimizer=torch.optim.AdamW,
        train_text_encoder=not cfg.freeze_text_encoder,
        snr_gamma=cfg.snr_gamma or None,
    )
    unet_losses = train_unet(module, latents, metas, cfg)
    module.cpu()
    info = {
        "command": "python -m ymn.model.tiny_base " + " ".join(cli_args(cfg)),
        "config": dict(arg.removeprefix("--").split("=", 1) for arg in cli_args(cfg)),
        "git_commit": commit,
        "vae_final_losses": vae_losses,
        "scaling_factor": scaling,
        "text_final_losses": text_losses,
        "unet_final_loss": unet_losses.get("loss"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    save_base(components, cfg.out, info)
    return info


def cli_args(cfg: TinyBaseConfig) -> list[str]:
    """The flags that reproduce cfg."""
    values = {k: shareable_path(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


def parse_args(argv: list[str] | None) -> TinyBaseConfig:
    """CLI flags → TinyBaseConfig (defaults: the shipped base)."""
    defaults = TinyBaseConfig()
    parser = argparse.ArgumentParser(
        prog="python -m ymn.model.tiny_base", description=__doc__.splitlines()[0]
    )
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        kind = Path if isinstance(value, Path) else type(value)
        kind = flag_bool if kind is bool else kind
        parser.add_argument(flag, type=kind, default=value, help=f"default: {value}")
    return TinyBaseConfig(**vars(parser.parse_args(argv)))


def flag_bool(text: str) -> bool:
    """A boolean flag's value: true/false, yes/no, 1/0 (argparse's bool() calls "False" true)."""
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return lowered in ("true", "yes", "1")


def main(argv: list[str] | None = None) -> int:
    """CLI: train the tiny base and write it to --out (default: the shipped asset)."""
    cfg = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # >1 thread on shared cores is slower than 1 here
    if cfg.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # as cuDNN's convolutions already do
    try:
        info = train_tiny_base(cfg)
    finally:
        torch.set_num_threads(threads)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
