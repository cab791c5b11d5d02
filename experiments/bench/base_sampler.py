"""base_sampler: does the sampler setting, not the weights, hold back the base's described look?

The shipped base's samples of 100 fresh one-person scenes' own tags (the `embedded_world`
prompts and seeds) under several samplers (DDIM steps and CFG scale; CFG rescaled as Lin et al.
2023 pair with a zero-terminal-SNR schedule; the stochastic DDPM and Euler-ancestral samplers;
DPM-Solver++ 2M), each read as in `embedded_world` (exactly one face; one face of the described
character and its two zones) and compared paired with the benchmark's setting (DDIM, 25 steps,
CFG 5): bootstrap 95 % CI and permutation p of the difference.

    python -m experiments.bench.base_sampler   # → experiments/tiny_base_work/base_sampler.json
    python -m experiments.bench.base_sampler --first-prompt 100 --n-samples 200 \
        --settings euler_a,25,5,0 --out ...   # one setting confirmed on prompts never read
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.bench.common import setup_torch
from experiments.bench.embedded_world import (
    GUIDANCE,
    SAMPLER_STEPS,
    SAMPLERS,
    eval_mode,
    fresh_scenes,
    one_person_flags,
    one_person_readings,
    own_tags,
    sample,
)
from experiments.probes.vae_ceiling import paired_difference
from ymn.model.components import load_components, tiny_base_path
from ymn.model.tiny_base_data import base_caption_tags
from ymn.paths import shareable_path

Setting = tuple[str, int, float, float]  # sampler, steps, CFG scale, CFG rescale
REFERENCE: Setting = ("ddim", SAMPLER_STEPS, GUIDANCE, 0.0)  # embedded_world's readings
SETTINGS: tuple[Setting, ...] = (
    REFERENCE,
    ("ddim", 25, 3.0, 0.0),
    ("ddim", 25, 7.5, 0.0),
    ("ddim", 50, 5.0, 0.0),
    ("ddim", 25, 5.0, 0.7),
    ("ddim", 25, 7.5, 0.7),
    ("ddpm", 50, 5.0, 0.0),
    ("euler_a", 25, 5.0, 0.0),
    ("dpmpp_2m", 25, 5.0, 0.0),
)
OUT = Path("experiments/tiny_base_work/base_sampler.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: shipped base)")
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--first-prompt", type=int, default=0, help="skip this many prompts")
    parser.add_argument(
        "--settings",
        type=parse_settings,
        default=SETTINGS[1:],
        help="sampler,steps,cfg,rescale;... to compare with the reference (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    setup_torch(threads=args.threads)
    components = load_components("tiny", pretrained=args.model)
    eval_mode(components)
    tags = base_caption_tags(tiny_base_path(args.model))
    first, n = args.first_prompt, args.n_samples
    scenes = fresh_scenes(n, one_person=True, skip=first, caption_tags=tags)
    metas = [meta for _, meta in scenes]
    prompts, seeds = [own_tags(m) for m in metas], list(range(first, first + n))
    flags = {}
    for setting in (REFERENCE, *args.settings):
        name, steps, cfg, rescale = setting
        images = sample(
            components, prompts, seeds, steps, cfg, scheduler=name, guidance_rescale=rescale
        )
        flags[setting] = one_person_flags(images, metas)
        print(setting, {k: int(v.sum()) for k, v in flags[setting].items()}, flush=True)
    per_image = {  # (hits, totals) per image, as paired_difference reads them
        setting: {k: (v.astype(int).tolist(), [1] * len(v)) for k, v in by_name.items()}
        for setting, by_name in flags.items()
    }
    result = {
        "command": "python -m experiments.bench.base_sampler "
        + " ".join(without_local_paths(argv or sys.argv[1:])),
        "model": shareable_path(Path(args.model)) if args.model else "shipped tiny base",
        "prompts": {"first": first, "n": n},
        "caption_tags": tags,
        "reference": setting_record(REFERENCE),
        "settings": [],
    }
    for setting, by_name in flags.items():
        entry = {**setting_record(setting), **one_person_readings(by_name)}
        if setting != REFERENCE:
            entry["minus_reference"] = paired_difference(per_image[REFERENCE], per_image[setting])
        result["settings"].append(entry)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def without_local_paths(argv: list[str]) -> list[str]:
    """The command's arguments with each absolute path shown as `ymn.paths.shareable_path` shows
    it (relative to the working directory, else its last part: the JSON is shared)."""
    return [shareable_path(Path(arg)) if Path(arg).is_absolute() else arg for arg in argv]


def parse_settings(text: str) -> tuple[Setting, ...]:
    """`sampler,steps,cfg,rescale;...` → settings, each checked against SAMPLERS."""
    settings = []
    for item in text.split(";"):
        parts = item.split(",")
        if len(parts) != 4 or parts[0] not in SAMPLERS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected sampler,steps,cfg,rescale with sampler in {sorted(SAMPLERS)}"
            )
        settings.append((parts[0], int(parts[1]), float(parts[2]), float(parts[3])))
    return tuple(settings)


def setting_record(setting: Setting) -> dict:
    name, steps, cfg, rescale = setting
    return {"sampler": name, "steps": steps, "guidance_scale": cfg, "guidance_rescale": rescale}


if __name__ == "__main__":
    raise SystemExit(main())
