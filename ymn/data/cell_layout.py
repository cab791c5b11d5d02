"""Lay an ASP-layout image folder out by face cell, so folder weights can balance face cells.

Categories are folders, so to sample face cells evenly each image (and its JSON sidecar) is
linked into `<its folder>/cell_r<row>c<col>/`, the 5x5 cell of its largest face (`noface/`
without faces). Every other level of the tree stays as it was, so WeightTree keeps the kind
and character-count shares and only splits each leaf folder equally among its cells: the
card's "imbalance" hypothesis for the face-grid tokens, against the natural layout.
Hard links when possible, copies otherwise; idempotent (`cell_layout.json` records the counts).

    python -m ymn.data.cell_layout SRC DST
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from ymn.data.captions import grid_cell

DONE = "cell_layout.json"
NO_FACE = "noface"


def largest_face_cell(facepos: list[list[float]], grid: int = 5) -> tuple[int, int] | None:
    """(row, col) of the largest face box's centre, or None without faces."""
    if not facepos:
        return None
    box = max(facepos, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    col, row = grid_cell(box, grid)
    return row, col


def cell_folder(rel: Path, meta: dict) -> Path:
    """Destination folder of the image at `rel` (relative to the source root)."""
    cell = largest_face_cell(meta.get("facepos") or [])
    return rel.parent / (NO_FACE if cell is None else f"cell_r{cell[0]}c{cell[1]}")


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def layout_by_cell(src: Path, dst: Path) -> dict[str, int]:
    """Link every image + sidecar of SRC into DST by face cell; returns images per folder."""
    src, dst = Path(src), Path(dst)
    if (dst / DONE).is_file():
        return json.loads((dst / DONE).read_text())
    counts: Counter[str] = Counter()
    for sidecar in sorted(src.rglob("*.json")):
        image = sidecar.with_suffix(".png")
        if not image.is_file():
            continue  # synth_info.json and other non-sidecars
        rel = image.relative_to(src)
        folder = cell_folder(rel, json.loads(sidecar.read_text()))
        (dst / folder).mkdir(parents=True, exist_ok=True)
        _link(image, dst / folder / image.name)
        _link(sidecar, dst / folder / sidecar.name)
        counts[folder.as_posix()] += 1
    if not counts:
        raise FileNotFoundError(f"{src}: no .png with a .json sidecar; generate it with ymn-synth")
    result = dict(sorted(counts.items()))
    (dst / DONE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def cell_histogram(counts: dict[str, int]) -> dict[str, int]:
    """Images per face cell over the whole layout (the natural cell distribution)."""
    totals: Counter[str] = Counter()
    for folder, n in counts.items():
        totals[Path(folder).name] += n
    return dict(sorted(totals.items()))


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m ymn.data.cell_layout SRC DST`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    counts = layout_by_cell(args.src, args.dst)
    print(f"{sum(counts.values())} images in {len(counts)} folders under {args.dst}")
    print("images per face cell:", json.dumps(cell_histogram(counts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
