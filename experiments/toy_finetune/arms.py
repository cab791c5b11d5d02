"""The toy fine-tune's arms side by side: the named lead at every probed step of each arm.

    python -m experiments.toy_finetune.arms [CURVE_DIR ...] [--out experiments/toy_finetune/arms.md]

Each CURVE_DIR holds a `curve.json` of `experiments.toy_finetune.curve`; its training overrides
name the arm (seed, learning rate and schedule, EMA, clipping, captions). One row per arm:
`1person, <name>` drawing the named lead, value [95 % Wilson interval] (k/n) at each step.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.toy_finetune.curve import PAIRED_READINGS
from ymn.probes.scores import format_reading

HERE = Path(__file__).parent
OLD_STREAM = "base before the VAE fix, stream before the data fix"
NEW_STREAM = "shipped base, mixed stream"
DEFAULT_ARMS = {  # curve folder: what it ran on, where overrides alone do not tell arms apart
    HERE: OLD_STREAM,
    HERE / "cosine": OLD_STREAM,
    HERE / "seed2": OLD_STREAM,
    HERE / "seed2_ema": OLD_STREAM,
    HERE / "mixed_seed1": NEW_STREAM,
    HERE / "mixed_seed2": NEW_STREAM,
    HERE / "oldbase_mixed_seed2": "base before the VAE fix (OLD_BASE), mixed stream",
    HERE / "te3e3_seed2": NEW_STREAM,
    HERE / "droplook_seed1": NEW_STREAM,
    HERE / "droplook_seed2": NEW_STREAM,
    HERE / "droplook_seed2_ema": NEW_STREAM,
    HERE / "droplook_seed2_ema_cos": NEW_STREAM,
    HERE / "droplook_seed1_ema_cos": NEW_STREAM,
    HERE / "droplook_seed3_ema_cos": NEW_STREAM,
    HERE / "card_seed2_ema_cos": NEW_STREAM,
    HERE / "droplook_seed1_2700": NEW_STREAM,
    HERE / "droplook_seed2_2700": NEW_STREAM,
    HERE / "droplook_seed3_2700": NEW_STREAM,
}
ARM_KEYS = (
    "seed=",
    "trainer.max_steps=",
    "model.optimizer.lr=",
    "model.lr_scheduler=",
    "model.ema_decay=",
    "probes.ema=",
    "trainer.gradient_clip_val=",
    "model.text_encoder_controls.",
    "caption.",
)
SCHEDULE_NAMES = {"CosineAnnealingLR": "cosine lr", "LinearLR": "lr warmup"}


def schedule_name(override: str) -> str:
    """`model.lr_scheduler={_target_:...CosineAnnealingLR,...}` → `cosine lr` (known ones)."""
    known = [name for cls, name in SCHEDULE_NAMES.items() if cls in override]
    return known[0] if known else override


def arm_name(curve: Mapping[str, Any]) -> str:
    """The overrides that tell arms apart (an experiment other than toy_phase1, seed, steps,
    lr, schedule, EMA, clipping, captions), short."""
    parts = []
    for override in curve["training_overrides"]:
        if override.startswith("experiment=") and override != "experiment=toy_phase1":
            parts.append(override)
        elif override.startswith("model.lr_scheduler="):
            parts.append(schedule_name(override))
        elif override.startswith(ARM_KEYS):
            parts.append(override)
    return ", ".join(parts) or curve["run"]


def lead_cell(probe_pass: Mapping[str, Any]) -> str:
    """The named lead at one pass: value [CI] (k/n)."""
    return format_reading(probe_pass["readings"][PAIRED_READINGS[0]])


def table(curves: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()) -> str:
    """Markdown: one row per arm (its name, then its note if any), one column per step."""
    steps = sorted({step for curve in curves for step in curve["steps"]})
    lines = [
        "| arm | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for curve, note in zip(curves, [*notes, *[""] * len(curves)], strict=False):
        by_step = {p["step"]: p for p in curve["passes"]}
        cells = [lead_cell(by_step[s]) if s in by_step else "—" for s in steps]
        name = arm_name(curve) + (f" ({note})" if note else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curve_dirs", nargs="*", type=Path, help="default: the committed arms")
    parser.add_argument("--out", type=Path, default=HERE / "arms.md")
    args = parser.parse_args(argv)
    dirs = args.curve_dirs or list(DEFAULT_ARMS)
    notes = [] if args.curve_dirs else list(DEFAULT_ARMS.values())
    curves = [json.loads((d / "curve.json").read_text()) for d in dirs]
    text = (
        "# The named lead, `1person, <name>`, per toy_phase1 arm and step\n\n"
        "Regenerate: `python -m experiments.toy_finetune.arms` (value [95 % Wilson CI] (k/n)).\n\n"
        + table(curves, notes)
    )
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
