"""The probe prompt set (counts × face-grid layouts × seeds) and user prompt files.

Probe prompts are written with the run's own caption config, so an ablation that spells the
count `three people`, puts it last, or uses a 3x3 grid is probed in its own vocabulary. The
same seeds are used for every count, so counts differ only by the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ymn.data.captions import GRID_TOKENS, CaptionConfig, build_caption, caption_config, grid_cell
from ymn.data.synthetic import CHARACTERS

MANY = 6  # the requested count recorded for `manypeople` (ASP: >= 6)
LAYOUTS = ("row", "upper", "lower", "column", "diagonal", "scatter")
PROMPT_FILE_KEYS = {"prompt", "negative", "seed", "size", "cfg"}
# `characters: auto`: the synthetic roster's first five (the leads), one per face in turn, so
# the default probe set also measures identity (ymn.probes.identity) on the default data
AUTO_CHARACTERS = tuple(list(CHARACTERS)[:5])
ALIASES = {"negative_prompt": "negative", "scale": "cfg", "guidance_scale": "cfg"}
# keys of an EveryDream2 sample_prompts.json object that hold defaults for all its samples
FILE_DEFAULTS = {"seed": "seed", "size": "size", "cfgs": "cfg", "cfg": "cfg", "scale": "cfg"}


def grid_size(caption: CaptionConfig) -> int:
    """Number of columns (= rows) of the caption config's face grid."""
    return len(GRID_TOKENS[caption.grid][0])


def layout_centres(layout: str, n: int, seed: int = 0) -> list[tuple[float, float]]:
    """Face centres (x, y) as fractions for n faces in a named layout.

    row/upper/lower: evenly spread across at y = 0.5/0.3/0.7; column: down the middle;
    diagonal: top-left to bottom-right; scatter: n distinct cells of a 5x5 grid, fixed per n.
    """
    spread = [(i + 0.5) / n for i in range(n)]
    if layout in ("row", "upper", "lower"):
        y = {"row": 0.5, "upper": 0.3, "lower": 0.7}[layout]
        return [(x, y) for x in spread]
    if layout == "column":
        return [(0.5, y) for y in spread]
    if layout == "diagonal":
        return [(v, v) for v in spread]
    if layout == "scatter":
        rng = np.random.default_rng(1000 * seed + n)
        cells = rng.choice(25, size=min(n, 25), replace=False)
        centres = [((int(c) % 5 + 0.5) / 5, (int(c) // 5 + 0.5) / 5) for c in cells]
        return sorted(centres)  # left to right, as ASP orders faces
    raise ValueError(f"unknown probe layout {layout!r}; choose from {LAYOUTS}")


def _face_boxes(centres: Sequence[tuple[float, float]], face: float) -> list[list[float]]:
    half = face / 2
    return [
        [max(0.0, x - half), max(0.0, y - half), min(1.0, x + half), min(1.0, y + half)]
        for x, y in centres
    ]


def _probe_caption_config(caption: CaptionConfig, grid_tokens: bool) -> CaptionConfig:
    """Keep exactly the probed parts (count as configured, grid, characters, general)."""
    return dataclasses.replace(
        caption,
        keep_count=1.0,
        keep_characters=1.0,
        keep_copyright=0.0,
        keep_general=1.0,
        keep_artist=0.0,
        keep_explicit=0.0,
        keep_facepos=1.0 if grid_tokens else 0.0,
        keep_tags=0.0,
        dropout=0.0,
    )


def probe_characters(characters: Sequence[str] | str | None) -> list[str]:
    """The names given to the probe faces in turn: a list as is, "auto" → AUTO_CHARACTERS,
    None (or an empty list) → no names."""
    if characters is None:
        return []
    if isinstance(characters, str):
        if characters != "auto":
            raise ValueError(
                f"probes.characters must be a list of names, 'auto' or null; got {characters!r}"
            )
        return list(AUTO_CHARACTERS)
    return [str(name) for name in characters]


def config_prompts(cfg: Any) -> list[dict[str, Any]]:
    """The probe prompt set a `ProbeConfig` names (caption, counts, layouts, seeds, characters,
    general): what the probe callback samples and what a checkpoint is probed with later."""
    return build_probe_prompts(
        cfg.caption,
        counts=cfg.counts,
        layouts=cfg.layouts,
        seeds=cfg.seeds,
        characters=cfg.characters,
        general=cfg.general,
    )


def build_probe_prompts(
    caption: CaptionConfig | Mapping[str, Any] | None = None,
    counts: Sequence[int | str] = (1, 2, 3, 4, 5, "many"),
    layouts: Sequence[str] = ("row", "scatter"),
    seeds: Sequence[int] = (0, 1),
    characters: Sequence[str] | str | None = None,
    general: str | None = None,
    grid_tokens: bool = True,
    face_size: float = 0.12,
) -> list[dict[str, Any]]:
    """Records {prompt, count, cells, characters, seed, layout, label} for every count × layout
    × seed.

    count: the requested number (`many` is recorded as 6); cells: the target (col, row) of each
    face on the caption config's grid, left to right; characters: the name asked of each face,
    in the same order as cells (names given to the faces in turn from `characters`: a list,
    "auto" for the synthetic roster's leads, or None for anonymous faces: an empty list);
    general: e.g. "aniscreen", added as ASP would.
    """
    characters = probe_characters(characters)
    cfg = _probe_caption_config(caption_config(caption), grid_tokens)
    size = grid_size(cfg)
    records = []
    for count in counts:
        n = MANY if count == "many" else int(count)
        if n < 1:
            raise ValueError(f"probe counts must be >= 1 or 'many', got {count!r}")
        for layout in layouts:
            boxes = _face_boxes(layout_centres(layout, n), face_size)
            names = [characters[i % len(characters)] for i in range(n)] if characters else []
            meta = {
                "n_people": "many" if count == "many" else n,
                "facepos": boxes,
                "characters": names,
                "general": general,
                "tags": [],
            }
            prompt = build_caption(meta, cfg, random.Random(0), dropout=False)
            cells = [grid_cell(box, size) for box in boxes]
            for seed in seeds:
                records.append(
                    {
                        "prompt": prompt,
                        "count": n,
                        "label": str(count),
                        "cells": [[int(c[0]), int(c[1])] for c in cells],
                        "characters": list(names),
                        "seed": int(seed),
                        "layout": layout,
                    }
                )
    return records


def parse_size(text: str | Sequence[int]) -> tuple[int, int]:
    """'512x768' or [512, 768] → (width, height), both positive multiples of 8."""
    parts = text.lower().replace("*", "x").split("x") if isinstance(text, str) else list(text)
    if len(parts) != 2:
        raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 512x768.")
    width, height = (int(p) for p in parts)
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise ValueError(f"size {text!r}: width and height must be positive multiples of 8.")
    return width, height


def _prompt_entries(item: Any, defaults: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """One entry per cfg value of a prompt-file item (a string or an object over `defaults`)."""
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected a prompt string or an object, got {item!r}")
    own = {ALIASES.get(k, k): v for k, v in item.items()}
    if set(own) - PROMPT_FILE_KEYS or "prompt" not in own:
        raise ValueError(
            f"{where}: needs a 'prompt' and only keys {sorted(PROMPT_FILE_KEYS)}; "
            f"got {sorted(item)}"
        )
    entry = {**defaults, **own}
    seed, size, cfg = entry.get("seed"), entry.get("size"), entry.get("cfg")
    try:
        fixed = {
            "prompt": str(entry["prompt"]),
            "negative": entry.get("negative"),
            "seed": None if seed is None or int(seed) < 0 else int(seed),  # ED2: -1 = random
            "size": None if size is None else list(parse_size(size)),
        }
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    cfgs = cfg if isinstance(cfg, list | tuple) else [cfg]  # a list: one image per value
    return [{**fixed, "cfg": None if c is None else float(c)} for c in cfgs]


def load_prompt_file(path: str | Path) -> list[dict[str, Any]]:
    """Prompts from a text file (one per line; blank lines and `#` comments skipped) or a JSON
    file: a list of strings / {prompt, negative, seed, size, cfg} objects, or EveryDream2's
    sample_prompts.json ({"samples": [{prompt, negative_prompt, seed, size}], "seed", "cfgs",
    "size": defaults for every sample}).

    Returns {prompt, negative, seed, size ([w, h]), cfg} entries, None where unset; a cfg list
    gives one entry per value; seed -1 (ED2's random) reads as unset.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        lines = [line.strip() for line in text.splitlines()]
        return [
            e
            for line in lines
            if line and line[0] != "#"
            for e in _prompt_entries(line, {}, str(path))
        ]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    defaults: dict[str, Any] = {}
    if isinstance(data, Mapping):
        defaults = {FILE_DEFAULTS[k]: v for k, v in data.items() if k in FILE_DEFAULTS}
        data = data.get("samples")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of prompts or an object with 'samples'")
    return [
        entry
        for i, item in enumerate(data)
        for entry in _prompt_entries(item, defaults, f"{path}[{i}]")
    ]
