"""Instrument validation of the sample-based probes (issue 15, item 6): four controls, each rate
with its n and a 95 % interval, written to experiments/probes/validation.json + VALIDATION.md.

1. positive control: ground-truth renders of every probe layout → detector → count, cell and
   identity accuracy (should be ≈ 1).
2. negative controls: the same renders scored against shuffled targets, and content-free images
   (flat colour, pixel noise, scenes without people, hand close-ups, empty-prompt samples of
   the model) scored against probe targets (should be at chance; analytic chance stated).
3. VAE ceiling: fresh synthetic scenes (seed 12345) through the model's VAE (posterior mode):
   share of images whose face count survives, of faces whose identity survives.
4. detector robustness: the positive-control renders under Gaussian noise and blur.
5. colour precision: fresh one-person scenes of each roster character with the character's
   hair and outfit colours moved δ RGB units in random directions: how far off a base may draw
   each look before `identify_character` stops naming it, beside the nearest palette colour.

    python -m experiments.probes.validation [--model PATH] [--n N]
    python -m experiments.probes.validation --markdown-only   # tables from the JSON again
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.probes import controls
from experiments.probes.report import write_markdown
from experiments.probes.vae_ceiling import FRESH_SEED, vae_round_trip_agreement
from ymn.probes.detectors import SyntheticFaceDetector

OUT_DIR = Path(__file__).resolve().parent
REPO = OUT_DIR.parent.parent
NOISE_SIGMAS = (0, 4, 8, 12, 16, 20, 24, 32, 48)  # 0-255 units
BLUR_RADII = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)  # px at 128 px
NEGATIVE_SEED = 54321
COLOUR_SEED = 777  # the directions colour precision moves each look's colours in
COLOUR_SHIFTS = (0, 4, 8, 12, 16, 24, 32)  # RGB units a look's colours are moved


def git(*args: str) -> str:
    """Output of a git command in this checkout ("unknown" outside git)."""
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def uncommitted_code() -> list[str]:
    """Tracked files under ymn/ or experiments/probes/ that differ from HEAD at run time."""
    changed = git("diff", "--name-only", "HEAD", "--", "ymn", "experiments/probes")
    return [] if changed in ("", "unknown") else changed.splitlines()


# ----------------------------------------------------------------------------- controls 1, 2, 4


def positive_control(
    records: Sequence[dict[str, Any]], readings: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Scores of the ground-truth renders: all, the runner's default set, per count, per layout."""
    pairs = list(zip(records, readings, strict=True))

    def subset(keep) -> dict[str, Any]:
        chosen = [(r, x) for r, x in pairs if keep(r)]
        return controls.score([r for r, _ in chosen], [x for _, x in chosen])

    return {
        "all": controls.score(records, readings),
        "runner_default": subset(lambda r: r["default_probe"]),
        "by_count": {
            str(c): subset(lambda r, c=c: r["count"] == c)
            for c in sorted({r["count"] for r in records})
        },
        "by_layout": {
            lay: subset(lambda r, lay=lay: r["layout"] == lay)
            for lay in dict.fromkeys(r["layout"] for r in records)
        },
    }


def negative_controls(
    records: Sequence[dict[str, Any]],
    readings: Sequence[dict[str, Any]],
    detector: Any,
    n: int,
    size: int,
    empty_prompt_images: list | None,
) -> dict[str, Any]:
    """Shuffled targets on the renders; content-free images scored against probe targets."""
    targets = controls.shuffled(records, NEGATIVE_SEED)
    rows: dict[str, Any] = {"shuffled_targets": controls.score(targets, readings)}
    for name, make in controls.NEGATIVE_IMAGES.items():
        images = make(n, NEGATIVE_SEED, size)
        rows[name] = controls.score(
            [targets[i % len(targets)] for i in range(n)], controls.read_images(images, detector)
        )
    if empty_prompt_images is not None:
        sample_readings = controls.read_images(empty_prompt_images, detector)
        paired = [targets[i % len(targets)] for i in range(len(sample_readings))]
        rows["empty_prompt"] = controls.score(paired, sample_readings)
        rows["empty_prompt"]["independence_chance"] = controls.independence_chance(
            [r["count"] for r in paired], [len(x["boxes"]) for x in sample_readings]
        )
    return {"chance": controls.analytic_chance(records), "rows": rows}


def robustness(
    records: Sequence[dict[str, Any]], images: Sequence[Any], detector: Any, n: int
) -> dict[str, Any]:
    """Scores of n probe renders (a seeded subset) under each noise sigma and blur radius."""
    order = controls.shuffled(list(range(len(records))), seed=1)[:n]
    chosen = [records[i] for i in order]
    clean = [images[i] for i in order]
    out: dict[str, Any] = {"n_images": len(chosen)}
    for kind, levels in (("noise", NOISE_SIGMAS), ("blur", (0, *BLUR_RADII))):
        rows = []
        for level in levels:
            readings = controls.read_images(controls.degraded(clean, kind, level), detector)
            rows.append({"level": level, **controls.score(chosen, readings)})
        out[kind] = rows
        out[f"{kind}_tolerated"] = controls.tolerance(rows)
        out[f"{kind}_tolerated_by_metric"] = {
            key: controls.tolerance(rows, keys=(key,))
            for key in ("count_acc", "cell_acc", "identity_acc")
        }
    return out


def colour_precision(per_character: int, size: int) -> dict[str, Any]:
    """Per roster character: the share of its fresh one-person scenes still named as it when
    its hair and outfit colours are moved by each of COLOUR_SHIFTS (seeded directions), the
    largest shift tolerated (≥ 0.95), and its colours' nearest palette neighbours."""
    from ymn.probes.identity import identify_character, palette_neighbours
    from ymn.probes.rates import rate

    neighbours = palette_neighbours()
    scenes = controls.solo_scenes_by_character(per_character, FRESH_SEED, size)
    out: dict[str, Any] = {"per_character": per_character, "shifts": list(COLOUR_SHIFTS)}
    characters = {}
    for name, own in scenes.items():
        rows = []
        for delta in COLOUR_SHIFTS:
            rng = np.random.default_rng([COLOUR_SEED, delta])
            named = [
                identify_character(controls.shift_look(image, name, delta, rng), meta["facepos"][0])
                == name
                for image, meta in own
            ]
            rows.append({"level": delta, "identity_acc": rate(sum(named), len(named))})
        characters[name] = {
            "rows": rows,
            "tolerated": controls.tolerance(rows, keys=("identity_acc",)),
            "nearest": {part: neighbours[f"{name} {part}"] for part in ("hair", "outfit")},
        }
    out["characters"] = characters
    return out


# ----------------------------------------------------------------------------- control 3


def load_model(model: str | None):
    """Components of --model (a diffusers folder, run dir or single file) or the shipped base."""
    from ymn.model.components import load_components

    return load_components("tiny", pretrained=model)


def base_is_current(vae: Any) -> bool:
    """Whether a VAE has components.py's current tiny architecture (the shipped base may lag)."""
    from ymn.model.components import tiny_vae

    current = tiny_vae().config
    return list(vae.config.block_out_channels) == list(current.block_out_channels) and int(
        vae.config.latent_channels
    ) == int(current.latent_channels)


def model_controls(model: str | None, n: int, size: int, samples: int, steps: int):
    """(VAE ceiling entry, empty-prompt images or None); pending when the model does not load."""
    name = model or "shipped tiny base (ymn/assets/tiny-base)"
    try:
        components = load_model(model)
    except Exception as err:  # noqa: BLE001 - any load failure makes the row pending
        return {"status": "pending", "model": name, "reason": f"{type(err).__name__}: {err}"}, None
    status, reason = "measured", ""
    if model is None and not base_is_current(components.vae):
        status = "stale"
        reason = (
            "The shipped base predates components.py's tiny VAE (being retrained); these are the "
            "old base's numbers, the new base's row is pending"
        )
    entry = {"status": status, "model": name, "reason": reason}
    entry |= vae_round_trip_agreement(components.vae, n=n, seed=FRESH_SEED, size=size)
    images = None
    if samples > 0:
        from experiments.probes.empty_prompt import empty_prompt_samples

        images = empty_prompt_samples(components, range(samples), steps=steps, size=size)
    return entry, images


# ----------------------------------------------------------------------------- CLI


def run(
    model: str | None,
    n: int,
    size: int = 128,
    samples: int = 48,
    steps: int = 10,
    casts: int = 8,
    colour_scenes: int = 40,
) -> dict[str, Any]:
    """All four controls; the JSON-ready result."""
    start = time.time()
    detector = SyntheticFaceDetector()
    records = controls.probe_layout_records(casts)
    images = controls.render_records(records, size)
    readings = controls.read_images(images, detector)
    vae, empty_images = model_controls(model, n, size, samples, steps)
    result = {
        "settings": {
            "model": model,
            "n": n,
            "size": size,
            "samples": samples,
            "sample_steps": steps,
            "casts": casts,
            "colour_scenes": colour_scenes,
            "fresh_seed": FRESH_SEED,
            "negative_seed": NEGATIVE_SEED,
            "detector": "SyntheticFaceDetector()",
        },
        "positive": positive_control(records, readings),
        "negative": negative_controls(records, readings, detector, n, size, empty_images),
        "vae_ceiling": vae,
        "robustness": robustness(records, images, detector, n),
        "colour_precision": colour_precision(colour_scenes, size),
    }
    result["git_commit"] = git("rev-parse", "HEAD")
    result["uncommitted_code"] = uncommitted_code()
    result["wall_seconds"] = round(time.time() - start, 1)
    return result


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["python -m experiments.probes.validation", *argv])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="experiments.probes.validation", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model",
        default=None,
        help="diffusers folder / run dir / .safetensors (default: shipped tiny base)",
    )
    parser.add_argument(
        "--n", type=int, default=150, help="images per negative, VAE and robustness row"
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=48, help="empty-prompt samples (0: skip)")
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument(
        "--casts", type=int, default=8, help="casts per probe layout (positive control)"
    )
    parser.add_argument(
        "--colour-scenes", type=int, default=40, help="one-person scenes per character (§5)"
    )
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite VALIDATION.md from validation.json"
    )
    args = parser.parse_args(argv)
    json_path, md_path = args.out_dir / "validation.json", args.out_dir / "VALIDATION.md"
    if args.markdown_only:
        result = json.loads(json_path.read_text())
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        result = run(
            args.model,
            args.n,
            args.size,
            args.samples,
            args.sample_steps,
            args.casts,
            args.colour_scenes,
        )
        result["command"] = command_line(argv if argv is not None else sys.argv[1:])
        args.out_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    md_path.write_text(write_markdown(result))
    print(f"wrote {json_path} and {md_path} ({result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
