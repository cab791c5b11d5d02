"""The end points chosen on validation seeds, one row per training seed, as a Markdown table.

    python -m experiments.toy_finetune.selected_table [SELECTED_JSON ...]
        [--out experiments/toy_finetune/selected.md]

Each SELECTED_JSON is a `selected.json` of `experiments.toy_finetune.select` (default: every
`select_seed*/selected.json` beside this file). Per training seed: the named lead on the
validation seeds at each step, the chosen step, the reading there on the test seeds, and, when
the run's last step was read on the test seeds, that reading and chosen − last.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ymn.probes.scores import format_reading

HERE = Path(__file__).parent


def training_seed(selected: Mapping[str, Any]) -> str:
    """The training seed, from the run folder's name (`select_s2` → 2)."""
    found = re.search(r"_s(\d+)", selected["runs"][0])
    return found.group(1) if found else selected["runs"][0]


def difference_cell(difference: Mapping[str, Any] | None) -> str:
    if not difference:
        return "–"
    low, high = difference["ci95"]
    return (
        f"{difference['difference']:+.2f} [{low:+.2f}, {high:+.2f}], "
        f"p = {difference['p_permutation']:.4f}"
    )


def table(selections: Sequence[Mapping[str, Any]]) -> str:
    steps = sorted({int(s) for sel in selections for s in sel["validation"]})
    head = ["training seed", *(str(s) for s in steps), "chosen", "test at chosen",
            "test at last step", "chosen − last"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sel in selections:
        validation = sel["validation"]
        cells = [
            training_seed(sel),
            *(f"{validation[str(s)]['value']:.2f}" if str(s) in validation else "–" for s in steps),
            str(sel["chosen_step"]),
            f"**{format_reading(sel['test'])}**",
            format_reading(sel["test_at_last_step"]) if "test_at_last_step" in sel else "–",
            difference_cell(sel.get("chosen_minus_last")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = selections[0]
    return "\n".join(lines) + (
        f"\n\nValidation: sampling seeds {seeds['validation_seeds'][0]}–"
        f"{seeds['validation_seeds'][1]} (values at each step); test: seeds "
        f"{seeds['test_seeds'][0]}–{seeds['test_seeds'][1]}, value [95 % Wilson interval] (k/n); "
        "chosen − last paired on the same test images (bootstrap interval, permutation p).\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("selected", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=HERE / "selected.md")
    args = parser.parse_args(argv)
    paths = args.selected or sorted(HERE.glob("select_seed*/selected.json"))
    if not paths:
        raise SystemExit("no selected.json given or found in select_seed*/")
    text = table([json.loads(p.read_text()) for p in paths])
    args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
