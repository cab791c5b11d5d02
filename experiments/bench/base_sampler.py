"""base_sampler: does the sampler setting, not the weights, hold back the base's described look?

The shipped base's samples of 100 fresh one-person scenes' own tags (the `embedded_world`
prompts and seeds) under several DDIM settings, each read as in `embedded_world` (exactly one
face; one face of the described character) and compared paired with the benchmark's setting
(25 steps, CFG 5): bootstrap 95 % CI and permutation p of the difference.

    python -m experiments.bench.base_sampler   # → experiments/tiny_base_work/base_sampler.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.bench.common import setup_torch
from experiments.bench.embedded_world import (
    GUIDANCE,
    SAMPLER_STEPS,
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

REFERENCE = (SAMPLER_STEPS, GUIDANCE)  # the setting of embedded_world's readings
SETTINGS = (REFERENCE, (25, 3.0), (25, 7.5), (50, 5.0))
OUT = Path("experiments/tiny_base_work/base_sampler.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: shipped base)")
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    setup_torch()
    components = load_components("tiny", pretrained=args.model)
    eval_mode(components)
    tags = base_caption_tags(tiny_base_path(args.model))
    metas = [meta for _, meta in fresh_scenes(args.n_samples, one_person=True, caption_tags=tags)]
    prompts, seeds = [own_tags(m) for m in metas], list(range(args.n_samples))
    flags = {
        setting: one_person_flags(sample(components, prompts, seeds, *setting), metas)
        for setting in SETTINGS
    }
    per_image = {  # (hits, totals) per image, as paired_difference reads them
        setting: {k: (v.astype(int).tolist(), [1] * len(v)) for k, v in by_name.items()}
        for setting, by_name in flags.items()
    }
    result = {
        "command": "python -m experiments.bench.base_sampler",
        "n": args.n_samples,
        "caption_tags": tags,
        "reference": {"steps": REFERENCE[0], "guidance_scale": REFERENCE[1]},
        "settings": [],
    }
    for (steps, cfg), by_name in flags.items():
        entry = {"steps": steps, "guidance_scale": cfg, **one_person_readings(by_name)}
        if (steps, cfg) != REFERENCE:
            entry["minus_reference"] = paired_difference(
                per_image[REFERENCE], per_image[(steps, cfg)]
            )
        result["settings"].append(entry)
        print(steps, cfg, {k: entry[k]["value"] for k in by_name}, flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
