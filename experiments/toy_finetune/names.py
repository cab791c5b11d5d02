"""Does a toy fine-tune bind names, or draw its commonest character whatever the name?

    python -m experiments.toy_finetune.names RUN_DIR [--checkpoints step0001500.ckpt ...]
        [--seeds 16] [--out DIR]

The probes' `1person, <name>` images all ask for the roster's lead (SaitoMio), which is also
the character the synthetic data shows most often (weight 4 of 20). So "the named lead drawn"
cannot tell a model that binds the name from one that draws SaitoMio for any prompt. Here each
checkpoint of a run (and the base it started from, step 0) draws `1person, <name>` for every
roster name in the probe's own prompt form (one centred face, its grid tokens), `--seeds`
sampling seeds per name, with the run's probe sampler (DDIM steps, guidance); a checkpoint
that keeps an EMA of the UNet (`model.ema_decay`) is sampled with the EMA weights, as the
export ships them. Per checkpoint:
- `named_drawn`: the face nearest the centre (where the probe asks for it) shows the asked
  character (every name equally often; like the probes, other faces may be drawn too);
- `if_name_ignored`: what `named_drawn` would be if the drawn look did not depend on the name
  (sum over characters of 1/K x the share of images drawing it), and a permutation p-value of
  `named_drawn` against shuffling the asked names over the images;
- the lead: drawn when asked, and drawn when another name is asked;
- per name: asked → drawn, and the share of images drawing each character;
- `asked_look`, per name: how much of the centred face's hair and outfit zones show the
  name's own colours, and how much of its hair an unnamed person's colour.
Writes `names.json` into `--out` (default: the run's `probes/` folder).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from experiments.bench.embedded_world import sample
from ymn.data.synthetic import CHARACTERS
from ymn.model.components import Components
from ymn.paths import shareable_path
from ymn.probes.detectors import SyntheticFaceDetector
from ymn.probes.identity import LookShares, character_of, look_shares
from ymn.probes.prompts import AUTO_CHARACTERS, build_probe_prompts
from ymn.probes.rates import rate

LEAD = AUTO_CHARACTERS[0]
PERMUTATIONS = 2000


def run_components(cfg: Any, checkpoint: Path | None) -> Components:
    """The run's model at `checkpoint`, or the base it started from (None)."""
    from hydra.utils import instantiate

    from ymn.model.export import apply_lightning_checkpoint

    components = instantiate(cfg.model.components)
    return components if checkpoint is None else apply_lightning_checkpoint(components, checkpoint)


def name_prompts(cfg: Any, seeds: int) -> list[tuple[str, str, int]]:
    """(asked name, prompt, seed) for every roster name × seed, in the probes' prompt form."""
    caption = OmegaConf.to_container(cfg.probes.caption, resolve=True)
    rows = []
    for name in CHARACTERS:
        records = build_probe_prompts(
            caption, counts=[1], layouts=["row"], seeds=range(seeds), characters=[name]
        )
        rows += [(name, r["prompt"], int(r["seed"])) for r in records]
    return rows


def centre_distance(box: Any) -> float:
    """How far a face box's centre lies from the image's (the asked face's cell)."""
    left, top, right, bottom = box
    return ((left + right) / 2 - 0.5) ** 2 + ((top + bottom) / 2 - 0.5) ** 2


def drawn_characters(
    images: list,
) -> tuple[list[str | None], list[int], list[LookShares | None]]:
    """The character of the detected face nearest the centre, where the probe asks for the
    one face (None: no face), the number of faces of each image, and the colours around that
    face (`look_shares`; None: no face)."""
    detector = SyntheticFaceDetector()
    drawn, faces, looks = [], [], []
    for image in images:
        boxes = detector.detect(image)
        faces.append(len(boxes))
        nearest = min(boxes, key=centre_distance, default=None)
        look = None if nearest is None else look_shares(image, nearest)
        looks.append(look)
        drawn.append(None if look is None else character_of(look))
    return drawn, faces, looks


def asked_look(asked: list[str], looks: list[LookShares | None]) -> dict[str, dict[str, Any]]:
    """Per asked name, the mean over its images with a face: the share of the hair zone in the
    name's own hair colour, of the outfit zone in its own outfit colour, and of the hair zone
    in an unnamed person's hair colour. Tells which part of a look a name has lost."""
    result = {}
    for name in CHARACTERS:
        own = [look for who, look in zip(asked, looks, strict=True) if who == name and look]
        result[name] = {
            "n_faces": len(own),
            "own_hair": mean_or_none([hair.get(name, 0.0) for hair, _ in own]),
            "own_outfit": mean_or_none([outfit.get(name, 0.0) for _, outfit in own]),
            "unnamed_hair": mean_or_none([hair.get(None, 0.0) for hair, _ in own]),
        }
    return result


def mean_or_none(values: list[float]) -> float | None:
    """The mean, or None (JSON null) without values."""
    return float(np.mean(values)) if values else None


def binding_readings(asked: list[str], drawn: list[str | None], seed: int = 0) -> dict[str, Any]:
    """named_drawn against the name-ignored expectation (permutation test), the lead, per name."""
    asked_a, drawn_a = np.array(asked), np.array(drawn, dtype=object)
    hits = asked_a == drawn_a
    rng = np.random.default_rng(seed)
    shuffled = [np.mean(rng.permutation(asked_a) == drawn_a) for _ in range(PERMUTATIONS)]
    p = (1 + sum(s >= hits.mean() for s in shuffled)) / (1 + PERMUTATIONS)
    shares = Counter(d for d in drawn if d is not None)
    names = list(CHARACTERS)
    lead_asked, other_asked = asked_a == LEAD, asked_a != LEAD
    return {
        "n": len(asked),
        "named_drawn": rate(int(hits.sum()), len(hits)),
        "if_name_ignored": sum(shares[c] / len(drawn) for c in names) / len(names),
        "p_permutation_names_shuffled": p,
        "lead_drawn_when_asked": rate(int(hits[lead_asked].sum()), int(lead_asked.sum())),
        "lead_drawn_when_another_is_asked": rate(
            int((drawn_a[other_asked] == LEAD).sum()), int(other_asked.sum())
        ),
        "per_name": {
            name: rate(int(hits[asked_a == name].sum()), int((asked_a == name).sum()))
            for name in names
        },
        "drawn_share": {name: shares[name] / len(drawn) for name in names},
        "identified_share": float(np.mean([d is not None for d in drawn])),
    }


def checkpoint_reading(
    cfg: Any, checkpoint: Path | None, rows: list[tuple[str, str, int]]
) -> dict[str, Any]:
    """Sample every (name, seed) with the run's probe sampler and read the binding."""
    components = run_components(cfg, checkpoint)
    images = sample(
        components,
        [prompt for _, prompt, _ in rows],
        [seed for _, _, seed in rows],
        int(cfg.probes.steps),
        float(cfg.probes.guidance_scale),
    )
    drawn, faces, looks = drawn_characters(images)
    asked = [name for name, _, _ in rows]
    return binding_readings(asked, drawn) | {
        "exactly_one_face_share": float(np.mean(np.array(faces) == 1)),
        "asked_look": asked_look(asked, looks),
    }


def base_label(cfg: Any, base: Path | None) -> str:
    """Which base the run started from, without a local path (the JSON is committed)."""
    if base is not None:
        return shareable_path(base)
    if cfg.model.components.get("pretrained"):
        return "the run's model.components.pretrained (not the embedded base)"
    return "the embedded base"


def step_of(checkpoint: Path | None) -> int:
    return 0 if checkpoint is None else int(checkpoint.stem.removeprefix("step"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoints", nargs="*", help="names in RUN/checkpoints (default: all)")
    parser.add_argument("--no-base", action="store_true", help="skip the base (step 0)")
    parser.add_argument("--seeds", type=int, default=16, help="sampling seeds per name")
    parser.add_argument("--out", type=Path, help="default: RUN_DIR/probes")
    parser.add_argument(
        "--base",
        type=Path,
        help="the base folder the run started from, when the embedded one has changed since "
        "(its VAE config holds the latent scaling factor the run trained with)",
    )
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(args.run_dir / "config_resolved.yaml")
    label = base_label(cfg, args.base)
    if args.base is not None:
        cfg.model.components.pretrained = str(args.base)
    folder = args.run_dir / "checkpoints"
    names = args.checkpoints or sorted(p.name for p in folder.glob("step*.ckpt"))
    checkpoints: list[Path | None] = [None] * (not args.no_base) + [folder / n for n in names]
    rows = name_prompts(cfg, args.seeds)
    readings = {}
    for checkpoint in checkpoints:
        reading = checkpoint_reading(cfg, checkpoint, rows)
        readings[str(step_of(checkpoint))] = reading
        print(
            f"step {step_of(checkpoint)}: named drawn {reading['named_drawn']['value']:.3f} "
            f"(name ignored: {reading['if_name_ignored']:.3f}, "
            f"p = {reading['p_permutation_names_shuffled']:.4f}); lead when asked "
            f"{reading['lead_drawn_when_asked']['value']:.2f}, when another is asked "
            f"{reading['lead_drawn_when_another_is_asked']['value']:.2f}"
        )
    out = args.out or args.run_dir / "probes"
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python -m experiments.toy_finetune.names RUN_DIR",
        "run": args.run_dir.name,
        "base": label,
        "seeds_per_name": args.seeds,
        "sampler": {"steps": int(cfg.probes.steps), "guidance": float(cfg.probes.guidance_scale)},
        "steps": readings,
    }
    (out / "names.json").write_text(json.dumps(result, indent=1))
    print(out / "names.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
