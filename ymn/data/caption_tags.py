"""Tag-level caption controls: fixed first parts, part shuffle, per-tag dropout, a prefix.

What kohya (`keep_tokens`, `shuffle_caption`, `caption_tag_dropout_rate`, `caption_prefix`),
EveryDream2 (`keep_tags`) and OneTrainer (tag dropout) users expect, on ymn's captions. A
caption is split at commas into parts (`3people`, `SaitoMio KonoRina`, `fhll fvtp`, tags...);
the first `fixed_first` parts stay in place and are never dropped; the rest are shuffled
(`shuffle_parts`), then each is dropped with probability `tag_dropout` unless protected.
Protected parts are never dropped: character names, count tokens (`3people`, `three people`),
face-grid tokens of any grid, and `protected_tags`. `prefix` goes before everything and is
neither counted in `fixed_first`, shuffled nor dropped; the dropout caption " " stays " ".

Randomness comes only from the draw's own `random.Random` (the stream's per-pass seed), and
none is drawn while `shuffle_parts` is off and `tag_dropout` is 0: the default captions, crops
and flips are exactly today's.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_COUNT_WORD = re.compile(r"^(\d+|many|[a-z]+) ?(people|person)$")


def _norm(text: str) -> str:
    """Comparison form of a tag: `_` as space, single spaces, lower case."""
    return " ".join(text.replace("_", " ").split()).lower()


def is_control_part(part: str, number_words: Sequence[str], grid_words: Iterable[str]) -> bool:
    """A count token (`3people`, `1person`, `manypeople`, `three people`) or face-grid tokens."""
    text = _norm(part)
    match = _COUNT_WORD.match(text)
    if match and (match.group(1) in (*number_words, "many") or match.group(1).isdigit()):
        return True
    words = text.split()
    grid = set(grid_words)
    return bool(words) and all(word in grid for word in words)


def protected_set(meta: Mapping[str, Any], protected_tags: Sequence[str]) -> set[str]:
    """Normalised parts never dropped: each character name, the names joined, and the list."""
    names = [str(c) for c in meta.get("characters") or []]
    return {_norm(t) for t in (*names, " ".join(names), *protected_tags) if t}


def split_parts(caption: str) -> list[str]:
    """A caption's comma-separated parts, stripped; empty parts dropped (kohya's split)."""
    return [p.strip() for p in caption.split(",") if p.strip()]


def apply_tag_controls(
    caption: str,
    meta: Mapping[str, Any],
    rng: random.Random,
    *,
    fixed_first: int,
    shuffle_parts: bool,
    tag_dropout: float,
    protected_tags: Sequence[str],
    prefix: str,
    number_words: Sequence[str],
    grid_words: Iterable[str],
    dropout: bool = True,
) -> str:
    """`caption` with the controls applied (see the module docstring); `dropout=False` (val,
    probes) keeps every part but still shuffles and prefixes."""
    parts = split_parts(caption)
    fixed, flex = parts[:fixed_first], parts[fixed_first:]
    if shuffle_parts:
        rng.shuffle(flex)
    if dropout and tag_dropout > 0:
        keep = protected_set(meta, protected_tags)
        grid = set(grid_words)
        flex = [
            p
            for p in flex
            if _norm(p) in keep
            or is_control_part(p, number_words, grid)
            or rng.random() >= tag_dropout
        ]
    return ", ".join([*split_parts(prefix), *fixed, *flex])
