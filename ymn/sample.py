"""`ymn-sample`: txt2img and inpainting from an exported model or a ymn run directory.

ymn-sample runs/phase2 --prompt "2people, aoi, hinata, mountain" --n 4 --seed 1
ymn-sample model.safetensors --prompt-file prompts.json --steps 30 --cfg 7 --size 512x768
ymn-sample runs/phase2 --prompt "aoi, face" --init-image bad.png --mask face_mask.png

Writes `{i:03d}_seed{seed}.png`, `grid.png` and `samples.json` (what made each image) into
--out. Masks follow A1111/diffusers: white is repainted, black is kept. A plain (4-channel) UNet
inpaints by latent blending in diffusers' inpaint pipeline; a 9-channel inpainting UNet natively.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image
from tqdm import tqdm

from ymn.callbacks.samples import image_grid
from ymn.data.tokenizer import set_max_token_length
from ymn.model.components import Components, components_pipeline, vae_downsampling
from ymn.model.export import load_any
from ymn.model.prompt_settings import PromptSettings, read_prompt_settings
from ymn.model.text_encoder_controls import TextEncoderControls, prompt_inputs
from ymn.probes.prompts import load_prompt_file, parse_size


@dataclass(frozen=True)
class Job:
    """One image to make."""

    prompt: str
    negative: str = ""
    seed: int = 0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    cfg: float = 7.0


# ---------------------------------------------------------------------------------------------
# Prompts (pure functions)
# ---------------------------------------------------------------------------------------------


def jobs_from_spec(spec: dict, base: Job, n: int) -> list[Job]:
    """The n jobs of one prompt entry (`load_prompt_file`'s, or {"prompt": ...} from the command
    line): seeds seed..seed+n-1; what the entry leaves unset comes from `base`."""
    seed = base.seed if spec.get("seed") is None else int(spec["seed"])
    width, height = spec["size"] if spec.get("size") else (base.width, base.height)
    cfg = base.cfg if spec.get("cfg") is None else float(spec["cfg"])
    negative = spec.get("negative") or base.negative or ""
    job = replace(base, prompt=spec["prompt"], negative=negative, width=width, height=height)
    return [replace(job, seed=seed + k, cfg=cfg) for k in range(n)]


def build_jobs(specs: list[dict], base: Job, n: int) -> list[Job]:
    """All jobs, in prompt order."""
    return [job for spec in specs for job in jobs_from_spec(spec, base, n)]


def image_name(index: int, job: Job) -> str:
    return f"{index:03d}_seed{job.seed}.png"


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def txt2img_pipeline(components: Components, device: str, dtype: torch.dtype):
    """StableDiffusionPipeline over the components with a DDIM sampler (as in training logs)."""
    pipe = components_pipeline(components)
    pipe.scheduler = DDIMScheduler.from_config(components.scheduler.config)
    # float32 is what the modules already hold; passing it anyway makes diffusers warn.
    pipe = pipe.to(device=device, dtype=None if dtype == torch.float32 else dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inpaint_pipeline(pipe: StableDiffusionPipeline) -> StableDiffusionInpaintPipeline:
    """The inpainting pipeline over the same modules (no copies)."""
    inpaint = StableDiffusionInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    return inpaint


def load_init_pair(init_image: Path, mask: Path) -> tuple[Image.Image, Image.Image]:
    """Init image (RGB) and mask (L); both must exist and have the same size."""
    for path in (init_image, mask):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image.")
    image = Image.open(init_image).convert("RGB")
    mask_image = Image.open(mask).convert("L")
    if image.size != mask_image.size:
        raise ValueError(f"{init_image} is {image.size} but mask {mask} is {mask_image.size}.")
    return image, mask_image


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline | StableDiffusionInpaintPipeline,
    job: Job,
    steps: int,
    init: tuple[Image.Image, Image.Image] | None = None,
    strength: float = 1.0,
    keep_unmasked: bool = False,
    settings: PromptSettings | None = None,
) -> Image.Image:
    """One image; with `init` = (image, mask), inpaint the mask's white area. Prompts are
    encoded as the model was trained (`settings`: long prompts in chunks, CLIP skip)."""
    generator = torch.Generator(device="cpu").manual_seed(job.seed)
    text: dict = {"prompt": job.prompt, "negative_prompt": job.negative or None}
    if settings is not None and not settings.is_default:
        controls = TextEncoderControls(clip_skip=settings.clip_skip)
        negative = [job.negative] if job.negative else None
        text = prompt_inputs(controls, pipe.text_encoder, pipe.tokenizer, [job.prompt], negative)
    kwargs = dict(
        **text,
        width=job.width,
        height=job.height,
        num_inference_steps=steps,
        guidance_scale=job.cfg,
        generator=generator,
    )
    if init is None:
        return pipe(**kwargs).images[0]
    image, mask = (im.resize((job.width, job.height), Image.LANCZOS) for im in init)
    out = pipe(**kwargs, image=image, mask_image=mask, strength=strength).images[0]
    return paste_unmasked(out, image, mask) if keep_unmasked else out


def paste_unmasked(out: Image.Image, image: Image.Image, mask: Image.Image) -> Image.Image:
    """The original pixels where the mask is black, blended by grey levels (as A1111 does)."""
    return Image.composite(out, image, mask)


def pick_device(device: str | None) -> tuple[str, torch.dtype]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, torch.float16 if device.startswith("cuda") else torch.float32


def sample_images(
    model: str | Path,
    jobs: list[Job],
    out_dir: Path,
    steps: int = 30,
    init: tuple[Image.Image, Image.Image] | None = None,
    strength: float = 1.0,
    keep_unmasked: bool = False,
    device: str | None = None,
    allow_pickle: bool = False,
    settings: PromptSettings | None = None,
) -> list[Path]:
    """Load `model`, make every job's image, write PNGs, grid.png and samples.json into out_dir.
    `settings` (default: what the model's export recorded) say how prompts are encoded."""
    if not Path(model).expanduser().exists():
        raise FileNotFoundError(
            f"model {model}: no such file or folder. Give a diffusers folder, an SD 1.x "
            ".safetensors single file, or a ymn run directory."
        )
    device, dtype = pick_device(device)
    components = load_any(model, allow_pickle=allow_pickle)
    scale = vae_downsampling(components.vae)
    native = components.unet.config.sample_size * scale
    jobs = [replace(j, width=j.width or native, height=j.height or native) for j in jobs]
    settings = settings or read_prompt_settings(Path(model))
    set_max_token_length(components.tokenizer, settings.max_token_length)
    pipe = txt2img_pipeline(components, device, dtype)
    if init is not None:
        pipe = inpaint_pipeline(pipe)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, images, records = [], [], []
    for i, job in enumerate(tqdm(jobs, desc="sampling", unit="img")):
        image = generate(pipe, job, steps, init, strength, keep_unmasked, settings)
        path = out_dir / image_name(i, job)
        image.save(path)
        paths.append(path)
        images.append(image)
        records.append({"file": path.name, **asdict(job), "steps": steps})
    image_grid(images).save(out_dir / "grid.png")
    meta = {"model": str(model), "inpaint": init is not None, "strength": strength}
    meta.update(asdict(settings))
    (out_dir / "samples.json").write_text(json.dumps({**meta, "images": records}, indent=2))
    return paths


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ymn-sample", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="diffusers folder, SD 1.x .safetensors, or ymn run directory")
    p.add_argument("--prompt", action="append", default=[], help="repeatable")
    p.add_argument("--prompt-file", type=Path, help="one prompt per line, or JSON (see docs)")
    p.add_argument("--negative", default="", help="negative prompt (default for all prompts)")
    p.add_argument("--n", type=int, default=1, help="images per prompt (seeds seed..seed+n-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale")
    p.add_argument("--size", help="WxH (default: the init image's, else the model's)")
    p.add_argument("--out", type=Path, help="output folder (default outputs/samples/<time>)")
    p.add_argument("--init-image", type=Path, help="inpainting: the image to repair")
    p.add_argument("--mask", type=Path, help="inpainting: white = repaint, black = keep")
    p.add_argument("--strength", type=float, default=1.0, help="inpainting noise strength")
    p.add_argument("--keep-unmasked", action="store_true", help="paste back unmasked pixels")
    p.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    p.add_argument("--allow-pickle", action="store_true", help="accept a .ckpt model")
    p.add_argument("--max-token-length", type=int, help="77 / 150 / 225 (default: as trained)")
    p.add_argument("--clip-skip", type=int, help="1 / 2 (default: as trained)")
    args = p.parse_args(argv)
    if not args.prompt and not args.prompt_file:
        p.error("give --prompt TEXT or --prompt-file FILE")
    if (args.init_image is None) != (args.mask is None):
        p.error("inpainting needs both --init-image and --mask")
    return args


def default_size(args: argparse.Namespace, init: tuple[Image.Image, Image.Image] | None):
    if args.size:
        return parse_size(args.size)
    if init is not None:
        return init[0].width // 8 * 8, init[0].height // 8 * 8
    return None, None  # the model's native size, known once it is loaded


def run_sample(argv: list[str] | None = None) -> list[Path]:
    """`ymn-sample MODEL --prompt ...`: writes the images and prints where; a bad model, prompt
    file or size exits with a one-line reason (SystemExit)."""
    args = parse_args(argv)
    try:
        init = load_init_pair(args.init_image, args.mask) if args.init_image else None
        specs = [{"prompt": p} for p in args.prompt]
        specs += load_prompt_file(args.prompt_file) if args.prompt_file else []
        width, height = default_size(args, init)
        base = Job("", args.negative, args.seed, width, height, args.cfg)
        jobs = build_jobs(specs, base, args.n)
        out = args.out or Path("outputs/samples") / time.strftime("%Y%m%d-%H%M%S")
        recorded = read_prompt_settings(Path(args.model))
        settings = PromptSettings(
            args.max_token_length or recorded.max_token_length, args.clip_skip or recorded.clip_skip
        )
        paths = sample_images(
            args.model,
            jobs,
            out,
            args.steps,
            init,
            args.strength,
            args.keep_unmasked,
            args.device,
            args.allow_pickle,
            settings,
        )
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"ymn-sample: {error}") from error
    print(f"Wrote {len(paths)} images, grid.png and samples.json to {out}")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Console entry point: 0 once the images are written."""
    run_sample(argv)
    return 0
