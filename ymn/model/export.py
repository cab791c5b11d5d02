"""Export: a diffusers folder and an SD 1.x single file (A1111/ComfyUI), and `ymn-export`.

ymn-export runs/phase1            # from its export/diffusers, else its last checkpoint
ymn-export runs/phase1 --fp16     # half-size copies in runs/phase1/export-fp16
ymn-export /models/x.safetensors --out /tmp/x   # any loadable model: convert the format
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from ymn.data.tokenizer import save_tokenizer
from ymn.model.adapters import merged_components
from ymn.model.components import Components, components_pipeline, load_components
from ymn.model.lora_export import LORA_FILE_NAME, export_kohya_lora
from ymn.model.prompt_settings import module_settings, write_model_card
from ymn.model.single_file import export_single_file, strip_local_paths, text_encoder_state
from ymn.run_dir import diffusers_export, latest_checkpoint

log = logging.getLogger(__name__)

SINGLE_FILE_NAME = "model.safetensors"
TEXT_ENCODER_WEIGHTS = "model.safetensors"
LIGHTNING_PREFIXES = ("vae", "text_encoder", "unet")


def save_diffusers(components: Components, folder: Path, dtype: torch.dtype | None = None) -> Path:
    """Write a diffusers folder in the layout of the reference SD 1.x folders (safetensors).

    Text-encoder keys carry `text_model.` and the tokenizer is vocab.json + merges.txt + its two
    JSON configs, so diffusers with transformers 4.x loads the folder as well as our pins do.
    With `dtype` the modules are cast in place and back to float32 afterwards (a lossy round trip
    for the caller's model: pass a copy that is not trained further).
    """
    folder = Path(folder)
    pipe = components_pipeline(components)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    try:
        pipe.save_pretrained(folder, safe_serialization=True)
        write_text_encoder_weights(components.text_encoder, folder / "text_encoder")
    finally:
        if dtype is not None:
            pipe.to(dtype=torch.float32)
    shutil.rmtree(folder / "tokenizer", ignore_errors=True)  # drop save_pretrained's tokenizer.json
    save_tokenizer(components.tokenizer, folder / "tokenizer")
    strip_local_paths(folder)
    return folder


def write_text_encoder_weights(model: torch.nn.Module, folder: Path) -> Path:
    """Replace the weights save_pretrained wrote with one file in the reference key layout."""
    for old in Path(folder).glob("model*.safetensors*"):  # shards and their index included
        old.unlink()
    state = {k: v.detach().cpu().contiguous() for k, v in text_encoder_state(model).items()}
    path = Path(folder) / TEXT_ENCODER_WEIGHTS
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def export_both(
    components: Components, out_dir: Path, dtype: torch.dtype | None = None
) -> list[Path]:
    """`out_dir/diffusers` and `out_dir/model.safetensors` (LDM layout) from one model; with
    LoRA adapters both merged, and the adapters in `out_dir/lora.safetensors`."""
    out_dir = Path(out_dir)
    merged = merged_components(components)
    return [
        save_diffusers(merged, out_dir / "diffusers", dtype),
        export_single_file(merged, out_dir / SINGLE_FILE_NAME, dtype),
        *export_kohya_lora(components, out_dir / LORA_FILE_NAME),
    ]


@contextmanager
def ema_weights(module: torch.nn.Module) -> Iterator[None]:
    """Swap in the UNet's EMA weights (when the module keeps them) for the duration."""
    ema = getattr(module, "ema", None)
    if ema is None:
        yield
        return
    params = list(module.unet.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def export_run(
    module: torch.nn.Module, out_dir: Path, single_file_fp16: bool = False
) -> list[Path]:
    """What every phase writes at its end: `out_dir/diffusers` (float32) and
    `out_dir/model.safetensors` (float16 with `single_file_fp16`: half the size, what is shared).

    With EMA enabled the exported UNet is the EMA one (what is shipped); the live weights stay.
    With LoRA adapters both hold the merged model, and `out_dir/lora.safetensors` the adapters.
    """
    out_dir = Path(out_dir)
    dtype = torch.float16 if single_file_fp16 else None
    with ema_weights(module):
        live = module.components()
        components = merged_components(live)  # LoRA folded into the full model (none: as is)
        written = [
            save_diffusers(components, out_dir / "diffusers"),
            export_single_file(components, out_dir / SINGLE_FILE_NAME, dtype),
            *export_kohya_lora(live, out_dir / LORA_FILE_NAME),  # only with model.adapter
        ]
    settings = module_settings(module)  # the model card: how prompts are encoded
    return written + (write_model_card(out_dir, settings) if settings else [])


# ---------------------------------------------------------------------------------------------
# From a run directory
# ---------------------------------------------------------------------------------------------


def apply_lightning_checkpoint(components: Components, ckpt_path: Path) -> Components:
    """Load a ymn Lightning checkpoint's weights (EMA UNet when present) into `components`."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{ckpt_path} could not be read with torch.load(weights_only=True): {error}"
        ) from error
    state = checkpoint.get("state_dict", checkpoint)
    for name in LIGHTNING_PREFIXES:
        part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        if not part:
            raise KeyError(f"{ckpt_path} has no `{name}.*` weights: not a ymn training checkpoint.")
        getattr(components, name).load_state_dict(part, strict=True)
    if checkpoint.get("ema"):
        ema = EMAModel(components.unet.parameters())
        ema.load_state_dict(checkpoint["ema"])
        ema.copy_to(components.unet.parameters())
        log.info("Using the EMA UNet weights stored in %s", ckpt_path)
    return components


def load_run_components(run_dir: Path) -> Components:
    """A ymn run's model: `export/diffusers` if written, else base model + last checkpoint."""
    run_dir = Path(run_dir)
    exported = diffusers_export(run_dir)
    if exported is not None:
        return load_components(pretrained=str(exported))
    ckpt = latest_checkpoint(run_dir)
    config_path = run_dir / "config_resolved.yaml"
    if ckpt is None or not config_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a finished ymn run: it has no export/diffusers, and no "
            "checkpoints/*.ckpt with config_resolved.yaml to rebuild the model from."
        )
    cfg = OmegaConf.load(config_path)
    log.info("Rebuilding the model of %s from %s", run_dir, ckpt.name)
    components = instantiate(cfg.model.components)
    if cfg.model.get("adapter"):  # a LoRA run: its checkpoint holds base + adapter weights
        text_encoder = components.text_encoder if cfg.model.train_text_encoder else None
        instantiate(cfg.model.adapter).attach(components.unet, text_encoder)
    return apply_lightning_checkpoint(components, ckpt)


def is_run_dir(path: Path) -> bool:
    """A ymn run directory (it records config_resolved.yaml at start-up)."""
    return Path(path).is_dir() and (Path(path) / "config_resolved.yaml").is_file()


def load_any(model: str | Path, allow_pickle: bool = False) -> Components:
    """A run directory, a diffusers folder or a single file, as Components."""
    if is_run_dir(Path(model)):
        return load_run_components(Path(model))
    return load_components(pretrained=str(model), allow_pickle=allow_pickle)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def default_out(source: Path, fp16: bool) -> Path:
    if not is_run_dir(source):
        raise ValueError(f"{source} is not a ymn run directory; pass --out DIR.")
    return source / ("export-fp16" if fp16 else "export")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ymn-export",
        description="Write a diffusers folder and an A1111/ComfyUI single file (.safetensors).",
    )
    parser.add_argument("source", type=Path, help="ymn run dir, diffusers folder or single file")
    parser.add_argument("--fp16", action="store_true", help="store weights as float16")
    parser.add_argument("--out", type=Path, help="output folder (default RUN/export[-fp16])")
    parser.add_argument("--allow-pickle", action="store_true", help="accept a .ckpt source")
    return parser.parse_args(argv)


def run_export(argv: list[str] | None = None) -> list[Path]:
    """`ymn-export RUN_DIR [--fp16] [--out DIR]`: both export formats; prints what it wrote.

    A missing or unusable source exits with a one-line reason (SystemExit), no traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        out = args.out or default_out(args.source, args.fp16)
        components = load_any(args.source, allow_pickle=args.allow_pickle)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise SystemExit(f"ymn-export: {error}") from error
    dtype = torch.float16 if args.fp16 else None
    diffusers_dir = out / "diffusers"
    source_folder = (args.source / "export" / "diffusers").resolve()
    source_exported = (source_folder / "model_index.json").is_file()
    if source_exported and diffusers_dir.resolve() == source_folder and dtype is None:
        # The run's own export is the source: keep it, add the single file beside it.
        written = [diffusers_dir, export_single_file(components, out / SINGLE_FILE_NAME)]
    else:
        written = export_both(components, out, dtype)
    for path in written:
        print(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Console entry point: 0 once both formats are written."""
    run_export(argv)
    return 0
