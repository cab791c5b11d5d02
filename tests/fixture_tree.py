"""Rebuild the folder tree of the card's dataset (ASP multiply log, 2022-12-22) for tests.

Every folder of `multiply_log.json` is created under a root with `n_images` empty files named
`000000.png`, `000001.png`, ... Empty files are enough: image counting goes by extension and
never decodes. Tests import `load_rows` / `build_tree` from here.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "asp-yamanosusume-2022-12"
MULTIPLY_LOG = FIXTURE_DIR / "multiply_log.json"


@cache
def _load_rows_cached() -> tuple[dict[str, Any], ...]:
    with MULTIPLY_LOG.open(encoding="utf-8") as f:
        return tuple(json.load(f))


def load_rows() -> list[dict[str, Any]]:
    """The logged rows: dicts with `dir`, `prob`, `n_images`, `multiply_raw`, `multiply`."""
    return [dict(row) for row in _load_rows_cached()]


def build_tree(root: Path, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Create every logged folder under `root` with its `n_images` empty `.png` files.

    Returns the rows used (the logged rows unless `rows` is given).
    """
    rows = load_rows() if rows is None else rows
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for row in rows:
        folder = root / row["dir"]
        folder.mkdir(parents=True, exist_ok=True)
        base = str(folder)
        for i in range(row["n_images"]):
            os.close(os.open(os.path.join(base, f"{i:06d}.png"), flags, 0o644))
    return rows
