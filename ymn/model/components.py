"""Model components: the embedded tiny SD-shaped set, or a local SD 1.x checkpoint.

`load_components` is the one entry point (Hydra group `model`). Nothing here touches the network:
a diffusers folder, a single `.safetensors` file, or the tiny base shipped in `ymn/assets`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ymn.data.tokenizer import MODEL_MAX_LENGTH, load_clip_tokenizer
from ymn.paths import ASSETS_DIR
from ymn.run_dir import diffusers_export

log = logging.getLogger(__name__)

TINY_BASE_DIR = ASSETS_DIR / "tiny-base"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
TINY_RESOLUTION = 128
VAE_DOWNSAMPLING = 4  # of tiny_vae()


@dataclass
class Components:
    """The five parts of a Stable Diffusion 1.x model."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler


# ---------------------------------------------------------------------------------------------
# The tiny SD-shaped model: same block types and key layout as SD 1.x, ~100x fewer parameters.
# ---------------------------------------------------------------------------------------------


def tiny_vae() -> AutoencoderKL:
    """AutoencoderKL with 3 blocks (4x downsampling: 32x32 latents at 128 px), 4 latent channels.

    SD 1.x downsamples 8x; at 128 px that leaves 2-3 latent pixels per small face, and the
    synthetic detector lost a third of the faces through such a VAE.
    """
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=TINY_RESOLUTION,
    )


def tiny_text_encoder() -> CLIPTextModel:
    """A 2-layer CLIP text transformer over the full 49,408-token CLIP vocabulary."""
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=64,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def tiny_unet(channels: int = 32) -> UNet2DConditionModel:
    """UNet2DConditionModel with SD 1.x's block layout (3 cross-attention levels + 1 plain).

    Blocks `channels` x (1, 2, 4, 4) wide, 32-wide attention heads at every level (the shipped
    base: 32, so one head at the 32x32 level, the costly one).
    """
    if channels < 32 or channels % 32:
        raise ValueError(f"UNet channels {channels}: expected a positive multiple of 32")
    widths = tuple(channels * k for k in (1, 2, 4, 4))
    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // VAE_DOWNSAMPLING,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=widths,
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=tuple(width // 32 for width in widths),  # diffusers: head count
        norm_num_groups=16,
    )


def vae_downsampling(vae: AutoencoderKL) -> int:
    """Pixels per latent pixel along one side (SD 1.x: 8; the tiny base: 4)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def sd_scheduler(
    prediction_type: str = "epsilon", zero_terminal_snr: bool = False
) -> DDPMScheduler:
    """SD 1.x's training noise schedule (scaled-linear betas, 1,000 steps); `zero_terminal_snr`
    rescales the betas so t = 999 is pure noise, with trailing sampler timesteps (Lin et al.
    2023), which needs v-prediction: epsilon carries no information about the image there."""
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ValueError("a zero terminal SNR schedule needs prediction_type='v_prediction'")
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_terminal_snr,
        timestep_spacing="trailing" if zero_terminal_snr else "leading",
    )


def build_tiny(seed: int = 0) -> Components:
    """A randomly initialised tiny set (used to train the embedded base, and in tests)."""
    torch.manual_seed(seed)
    return Components(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=load_clip_tokenizer(),
        unet=tiny_unet(),
        scheduler=sd_scheduler(),
    )


def components_pipeline(
    components: Components, scheduler: SchedulerMixin | None = None
) -> StableDiffusionPipeline:
    """A pipeline over the given modules (no copies), without a safety checker."""
    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler or components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# ---------------------------------------------------------------------------------------------
# Loading from disk
# ---------------------------------------------------------------------------------------------


def load_diffusers_folder(folder: Path) -> Components:
    """Load a diffusers-format SD folder (safetensors only) with no network access."""
    kwargs = {
        "local_files_only": True,
        "use_safetensors": True,
        "torch_dtype": torch.float32,
        "low_cpu_mem_usage": False,
    }
    tokenizer_dir = folder / "tokenizer"
    has_tokenizer = (tokenizer_dir / "tokenizer.json").is_file() or (
        tokenizer_dir / "vocab.json"
    ).is_file()
    tokenizer = (
        CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        if has_tokenizer
        else load_clip_tokenizer()
    )
    return Components(
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kwargs),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs),
        scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
    )


def resolve_model_path(path: str | Path, allow_pickle: bool = False) -> Path:
    """Check a user-given model path before any work: it exists, and it is not a pickle file."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(
            f"model.components.pretrained={path}: no such file or folder. Point it at a local "
            "SD 1.x diffusers folder (with model_index.json) or a single .safetensors checkpoint."
        )
    if resolved.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ValueError(
            f"model.components.pretrained={path} is a pickle checkpoint, which can run arbitrary "
            "code when loaded. Convert it to .safetensors, or set "
            "model.components.allow_pickle=true if you trust it (it is then loaded with "
            "torch.load(weights_only=True))."
        )
    if resolved.is_dir() and not (resolved / "model_index.json").is_file():
        exported = diffusers_export(resolved)  # a ymn run directory
        if exported is not None:
            return exported
        raise FileNotFoundError(
            f"{resolved} has no model_index.json: it is not a diffusers folder or ymn run dir."
        )
    return resolved


def tiny_base_path(pretrained: str | None) -> Path:
    """What `load_components("tiny", pretrained)` reads: `pretrained`, or the shipped base."""
    return TINY_BASE_DIR if pretrained is None else Path(pretrained)


def load_components(
    name: str = "tiny",
    pretrained: str | None = None,
    allow_pickle: bool = False,
    prediction_type: str | None = None,
) -> Components:
    """Build the model set named by the Hydra `model` group.

    name: "tiny" (embedded base unless `pretrained` is given) or "sd15" (needs `pretrained`).
    pretrained: a diffusers folder, a ymn run dir, or a single-file SD 1.x checkpoint.
    prediction_type: override the scheduler's ("epsilon" or "v_prediction").
    """
    if pretrained is None and name == "tiny":
        base = tiny_base_path(None)
        if not (base / "model_index.json").is_file():
            raise FileNotFoundError(
                f"The embedded tiny base is missing at {base}; run `make tiny-base`."
            )
        components = load_diffusers_folder(base)
    elif pretrained is None:
        raise ValueError(
            f"model={name} needs model.components.pretrained=PATH (a local SD 1.x checkpoint)."
        )
    else:
        path = resolve_model_path(pretrained, allow_pickle)
        if path.is_dir():
            components = load_diffusers_folder(path)
        else:
            from ymn.model.single_file import load_single_file

            components = load_single_file(path, allow_pickle=allow_pickle)
    if prediction_type is not None:
        components.scheduler = DDPMScheduler.from_config(
            components.scheduler.config, prediction_type=prediction_type
        )
    return components
