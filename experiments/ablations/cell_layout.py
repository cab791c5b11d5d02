"""Lay a synthetic ASP dataset out by face cell, for ablation 2b (cell-balanced vs natural).

Categories are folders, so to weight by face cell each image (and its JSON sidecar) is linked
into `<kind>/cell_r<row>c<col>/`, the 5x5 cell of its largest face; images without faces go to
`<kind>/noface/`. `<kind>` is the top folder of the source (screenshots, fanart,
regularization, hands). Hard links when possible, copies otherwise; idempotent.

    python -m experiments.ablations.cell_layout SRC DST
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


def largest_face_cell(facepos: list[list[float]], grid: int = 5) -> tuple[int, int] | None:
    """(row, col) of the largest face box's centre, or None without faces."""
    if not facepos:
        return None
    box = max(facepos, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    col, row = grid_cell(box, grid)
    return row, col


def cell_folder(rel: Path, meta: dict) -> str:
    """Destination folder of an image at `rel` (relative to the source root)."""
    kind = rel.parts[0] if len(rel.parts) > 1 else "root"
    cell = largest_face_cell(meta.get("facepos") or [])
    return f"{kind}/noface" if cell is None else f"{kind}/cell_r{cell[0]}c{cell[1]}"


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def layout_by_cell(src: Path, dst: Path) -> dict[str, int]:
    """Link every image + sidecar of SRC into DST by face cell; return images per folder."""
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
        counts[folder] += 1
    if not counts:
        raise FileNotFoundError(f"{src}: no .png with a .json sidecar; generate it with ymn-synth")
    result = dict(sorted(counts.items()))
    (dst / DONE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: cell_layout.py SRC DST."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    counts = layout_by_cell(args.src, args.dst)
    print(f"{sum(counts.values())} images in {len(counts)} folders under {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
