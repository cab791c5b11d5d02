"""SD 1.x single files: export in the original LDM key layout, and load them back offline.

The layout is the one A1111 and ComfyUI read: `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE), `cond_stage_model.transformer.text_model.*` (CLIP text encoder).

diffusers ships only the LDM → diffusers direction (`diffusers.loaders.single_file_utils`); the
inverse below is generated from the model config (so it holds for any `layers_per_block`, e.g.
the tiny model's 1 as well as SD 1.x's 2), and every export is checked by running diffusers' own
converter on the result, which must give back exactly the model's keys.

Configs: loading a single file offline needs the diffusers configs of its parts. ymn's exports
carry them inside the file, as JSON in the safetensors metadata (key `ymn_diffusers_config`), so
a file is self-describing whatever its sizes; files from elsewhere get the SD 1.5 configs shipped
in `ymn/assets/sd15-config` (or an explicit `config=` folder).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import save_file

from ymn.data.tokenizer import load_clip_tokenizer
from ymn.model.components import PICKLE_SUFFIXES, Components, resolve_model_path
from ymn.model.prediction_markers import apply_markers, prediction_markers
from ymn.paths import ASSETS_DIR

log = logging.getLogger(__name__)

SD15_CONFIG_DIR = ASSETS_DIR / "sd15-config"
CONFIG_METADATA_KEY = "ymn_diffusers_config"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SD1_CONTEXT_KEY = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SD1_CONTEXT_DIM = 768
SD1_CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
LOCAL_PATH_KEYS = frozenset({"_name_or_path", "name_or_path"})

UNET_RESNET_RENAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
VAE_ATTENTION_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)

# ---------------------------------------------------------------------------------------------
# diffusers → LDM key names
# ---------------------------------------------------------------------------------------------


def unet_block_prefixes(config: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) for every UNet block, from the UNet config."""
    per = config["layers_per_block"] + 1  # LDM numbers each level's layers + its resampler
    pairs = [("mid_block.attentions.0.", "middle_block.1.")]
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    for i, up_type in enumerate(config["up_block_types"]):
        for j in range(per - 1):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{per * i + j + 1}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{per * i + j + 1}.1."))
        pairs.append(
            (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per * (i + 1)}.0.op.")
        )
        for j in range(per):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{per * i + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{per * i + j}.1."))
        slot = 2 if up_type.startswith("CrossAttn") else 1  # the upsampler follows the attention
        pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{per * i + per - 1}.{slot}."))
    return pairs


def vae_block_prefixes(config: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) for every VAE block; LDM numbers decoder levels upwards."""
    n = len(config["block_out_channels"])
    pairs = []
    for part in ("encoder", "decoder"):
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
        pairs += [
            (f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)
        ]
    for i in range(n):
        for j in range(config["layers_per_block"] + 1):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
            pairs.append(
                (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.")
            )
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    return pairs


def _rename_prefix(key: str, pairs: list[tuple[str, str]], part: str) -> tuple[str, str]:
    """Swap the block prefix of `key`; returns (new key, the diffusers prefix that matched)."""
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old) :], old
    raise ValueError(f"{part} key {key!r} does not fit the SD 1.x LDM layout; cannot export it.")


Inner = Callable[[str, str, torch.Tensor], tuple[str, torch.Tensor]]


def _to_ldm(
    state_dict: dict[str, torch.Tensor],
    top: dict[str, str],
    pairs: list[tuple[str, str]],
    part: str,
    inner: Inner,
) -> dict[str, torch.Tensor]:
    """Rename every key: top-level ones from `top`, block ones by prefix, then `inner` renames
    inside the block (given the new key, the matched diffusers prefix and the tensor)."""
    out = {}
    for key, value in state_dict.items():
        if key in top:
            out[top[key]] = value
            continue
        new, matched = _rename_prefix(key, pairs, part)
        new, value = inner(new, matched, value)
        out[new] = value
    return out


def _unet_inner(key: str, matched: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    if ".resnets." in matched:
        for old, ldm in UNET_RESNET_RENAMES:
            key = key.replace(f".{old}.", f".{ldm}.")
    return key, value


def _vae_inner(key: str, matched: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    if ".resnets." in matched:
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
    elif ".attentions." in matched:
        for old, ldm in VAE_ATTENTION_RENAMES:
            key = key.replace(f".{old}", f".{ldm}")
        if value.ndim == 2:
            value = value[:, :, None, None]
    return key, value


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict in LDM names (without the `model.diffusion_model.` prefix)."""
    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    return _to_ldm(state_dict, top, unet_block_prefixes(config), "UNet", _unet_inner)


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict in LDM names; attention projections become 1x1 convolutions."""
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    return _to_ldm(state_dict, top, vae_block_prefixes(config), "VAE", _vae_inner)


def text_encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CLIP text encoder weights in the reference layout (`text_model.*`), the one that
    transformers 4.x requires and 5.x also reads."""
    # transformers >= 5.6 flattened CLIPTextModel (no `.text_model`); the files keep the level.
    inner = "" if hasattr(model, "text_model") else "text_model."
    return {f"{inner}{k}": v for k, v in model.state_dict().items()}


def text_encoder_to_ldm(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CLIP text encoder weights under `cond_stage_model.transformer.text_model.*`."""
    return {CLIP_PREFIX + k: v for k, v in text_encoder_state(model).items()}


def components_to_ldm(components: Components) -> dict[str, torch.Tensor]:
    """The whole model as one LDM-layout state dict, checked against diffusers' own converter."""
    unet_config, vae_config = dict(components.unet.config), dict(components.vae.config)
    unet_sd, vae_sd = components.unet.state_dict(), components.vae.state_dict()
    ldm = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet_sd, unet_config).items()}
    ldm.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae_sd, vae_config).items()})
    ldm.update(text_encoder_to_ldm(components.text_encoder))
    _check_inverts(ldm, unet_sd, unet_config, vae_sd, vae_config)
    return ldm


def _check_inverts(ldm: dict, unet_sd: dict, unet_config: dict, vae_sd: dict, vae_config: dict):
    """diffusers' LDM → diffusers conversion must recover exactly the keys we started from."""
    for part, back, original in (
        ("UNet", convert_ldm_unet_checkpoint(ldm, unet_config), unet_sd),
        ("VAE", convert_ldm_vae_checkpoint(ldm, vae_config), vae_sd),
    ):
        if set(back) != set(original):
            lost = sorted(set(original) - set(back))[:5]
            extra = sorted(set(back) - set(original))[:5]
            raise RuntimeError(
                f"{part} LDM export does not invert under diffusers' converter "
                f"(lost {lost}, unexpected {extra}); this architecture is not SD 1.x-shaped."
            )
    if not convert_ldm_clip_checkpoint(ldm):
        raise RuntimeError("Text encoder export produced no keys diffusers recognises as CLIP.")


# ---------------------------------------------------------------------------------------------
# Configs travelling with the file
# ---------------------------------------------------------------------------------------------


def model_index(scheduler_class: str) -> dict:
    """The model_index.json of an SD 1.x pipeline without safety checker."""
    return {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def write_config_folder(components: Components, folder: Path) -> Path:
    """A diffusers config folder (configs only, no weights) describing `components`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_class = type(components.scheduler).__name__
    (folder / "model_index.json").write_text(json.dumps(model_index(scheduler_class), indent=2))
    components.unet.save_config(folder / "unet")
    components.vae.save_config(folder / "vae")
    components.scheduler.save_config(folder / "scheduler")
    components.text_encoder.config.save_pretrained(folder / "text_encoder")
    return folder


def strip_local_paths(folder: Path) -> None:
    """Drop `_name_or_path` (where the exporting machine loaded the model from) from every
    JSON config under `folder`; no loader needs it, and it leaks local paths into shared files."""
    for path in Path(folder).rglob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and LOCAL_PATH_KEYS & set(config):
            kept = {k: v for k, v in config.items() if k not in LOCAL_PATH_KEYS}
            path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")


def config_metadata(components: Components) -> str:
    """The config folder as one JSON string ({relative path: file text}), without local paths."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config_folder(components, Path(tmp))
        strip_local_paths(folder)
        files = {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*.json")}
    return json.dumps(files, sort_keys=True)


def unpack_config_metadata(text: str, folder: Path) -> Path:
    """Write the files of `config_metadata` back into `folder`."""
    for rel, content in json.loads(text).items():
        target = Path(folder) / rel
        if ".." in Path(rel).parts or target.suffix != ".json":
            raise ValueError(f"Refusing config entry {rel!r} from a single file's metadata.")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return Path(folder)


# ---------------------------------------------------------------------------------------------
# Export and load
# ---------------------------------------------------------------------------------------------


def export_single_file(
    components: Components, path: Path, dtype: torch.dtype | None = None
) -> Path:
    """Write one `.safetensors` in the LDM layout (A1111/ComfyUI), with its configs embedded."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: single-file exports are written as .safetensors only.")
    ldm = components_to_ldm(components)
    tensors = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in ldm.items()}
    markers, marker_metadata = prediction_markers(components.scheduler.config)
    tensors.update(markers)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", CONFIG_METADATA_KEY: config_metadata(components), **marker_metadata}
    save_file(tensors, str(path), metadata=metadata)
    log.info("Wrote %s (%d tensors, %s)", path, len(tensors), dtype or "as trained")
    return path


def _safetensors_header(path: Path) -> tuple[list[str], dict[str, str], dict[str, tuple]]:
    """Key names, metadata and the shapes of the keys we inspect, without reading the weights."""
    wanted = (SD1_CONTEXT_KEY, SD1_CONV_IN_KEY)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in wanted if k in keys}
        return keys, f.metadata() or {}, shapes


def _check_sd1(path: Path, keys: list[str], shapes: dict[str, tuple]) -> None:
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise ValueError(
            f"{path} has no `{UNET_PREFIX}*` keys: it is not an SD 1.x single-file checkpoint "
            "(a diffusers folder's weights file? then point at the folder instead)."
        )
    context = shapes.get(SD1_CONTEXT_KEY)
    if context is not None and context[1] != SD1_CONTEXT_DIM:
        raise ValueError(
            f"{path}: cross-attention width {context[1]}, SD 1.x has {SD1_CONTEXT_DIM}. Only "
            "SD 1.x files load without a config; pass config=<diffusers folder> for others."
        )


@contextmanager
def _config_folder(path: Path, config: Path | None) -> Iterator[Path]:
    """The config folder to load `path` with: given, embedded in the file, or SD 1.5's."""
    if config is not None:
        yield Path(config)
        return
    if path.suffix != ".safetensors":
        yield SD15_CONFIG_DIR
        return
    keys, metadata, shapes = _safetensors_header(path)
    if CONFIG_METADATA_KEY in metadata:
        with tempfile.TemporaryDirectory() as tmp:
            yield unpack_config_metadata(metadata[CONFIG_METADATA_KEY], Path(tmp))
        return
    _check_sd1(path, keys, shapes)
    in_channels = shapes.get(SD1_CONV_IN_KEY, (0, 4))[1]
    if in_channels == 4:
        yield SD15_CONFIG_DIR
        return
    with tempfile.TemporaryDirectory() as tmp:  # SD 1.x inpainting models take 9 channels
        folder = Path(shutil.copytree(SD15_CONFIG_DIR, Path(tmp) / "config"))
        unet_config = json.loads((folder / "unet" / "config.json").read_text())
        unet_config["in_channels"] = in_channels
        (folder / "unet" / "config.json").write_text(json.dumps(unet_config, indent=2))
        yield folder


def load_single_file(
    path: Path, allow_pickle: bool = False, config: Path | None = None
) -> Components:
    """Load an SD 1.x single file (.safetensors; pickle only with allow_pickle) offline, in fp32.

    config: a diffusers-format folder with the parts' configs; by default the configs embedded
    by `export_single_file`, else SD 1.5's (`ymn/assets/sd15-config`).
    """
    path = resolve_model_path(path, allow_pickle)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; load_single_file wants one checkpoint file.")
    if path.suffix in PICKLE_SUFFIXES:
        log.warning("Loading pickle checkpoint %s with torch.load(weights_only=True).", path)
    with _config_folder(path, config) as config_dir:
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path),
                config=str(config_dir),
                local_files_only=True,
                torch_dtype=torch.float32,
                tokenizer=load_clip_tokenizer(),
                safety_checker=None,
                feature_extractor=None,
            )
        except Exception as error:
            raise ValueError(
                f"Could not load {path} as an SD 1.x single file with the configs in "
                f"{config_dir}: {error}"
            ) from error
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if path.suffix == ".safetensors":
        keys, metadata, _ = _safetensors_header(path)
        scheduler = apply_markers(scheduler, keys, metadata)
    return Components(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=scheduler,
    )
