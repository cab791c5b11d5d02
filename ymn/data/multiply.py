"""multiply.txt semantics of EveryDream 1 (the recipe's trainer) and EveryDream 2.

ED1 (the default, `mode="ed1"`, as the original model was trained): a folder's multiply.txt is
read as `int(float(text))`, so 1.5 -> 1 copy and 0.5 -> 0 copies (the folder is dropped:
`ymn-pack` and the data setup warn, naming it); copies are made once at load time and are the
same every epoch; the value is not inherited by sub-folders.

ED2: fractional. Every image gets `floor(m)` copies, and a fractional fill makes the epoch
hold exactly `floor(sum(n * m))` draws; the fill is re-drawn every epoch. ED2 draws one
Bernoulli per image; here the fill is allocated per category with systematic sampling (each
category gets the floor or the ceiling of its expected share, the total is exact) and, inside a
category, a stateless seeded permutation decides which images get the extra copy. Memory is
O(number of categories), never O(number of images).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

MULTIPLY_FILE = "multiply.txt"
Mode = Literal["ed1", "ed2"]
_MASK64 = (1 << 64) - 1
_FEISTEL_ROUNDS = 4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CategoryPlan:
    """One epoch of one category: every image gets `whole` copies, `extras` images one more."""

    n_images: int
    whole: int
    extras: int


def read_number_file(folder: Path, name: str, what: str, example: str) -> float | None:
    """The finite number >= 0 in `folder/name` (multiply.txt, loss_scale.txt), or None when the
    folder has none; ValueError naming the file for anything else."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{path}: cannot read {text!r} as a number; write one number such as {example}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{path}: {what} must be a finite number >= 0, got {text!r}")
    return value


def read_multiply_txt(folder: Path) -> float | None:
    """The raw number in `folder/multiply.txt`, or None when the folder has none."""
    return read_number_file(folder, MULTIPLY_FILE, "multiply", "2 or 1.5")


def ed1_copies(raw: float) -> int:
    """Copies per image in ED1: `int(float(text))`, i.e. truncation (1.5 -> 1, 0.5 -> 0)."""
    _check_multiply("multiply", raw)
    return int(raw)


def _check_multiply(category: str, raw: float) -> None:
    if not math.isfinite(raw) or raw < 0:
        raise ValueError(f"category {category!r}: multiply must be finite and >= 0, got {raw!r}")


def _check_categories(categories: Mapping[str, tuple[int, float]]) -> None:
    for name, (n_images, raw) in categories.items():
        if n_images < 0:
            raise ValueError(f"category {name!r}: n_images must be >= 0, got {n_images}")
        _check_multiply(name, raw)


def _rng(seed: int, epoch: int, salt: str = "") -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{salt}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def _ed2_extras(
    categories: Mapping[str, tuple[int, float]], seed: int, epoch: int
) -> dict[str, int]:
    """Spread the epoch's fractional fill over categories (systematic sampling)."""
    fill = {
        name: n * (Fraction(raw) - math.floor(raw))
        for name, (n, raw) in categories.items()
        if n > 0 and raw != math.floor(raw)
    }
    total = sum(fill.values(), Fraction(0))
    extras = dict.fromkeys(categories, 0)
    n_fill = math.floor(total)  # floor(sum n*m) - sum n*floor(m), evaluated exactly
    if n_fill == 0:
        return extras
    rng = _rng(seed, epoch, "ed2-fill")
    order = sorted(fill)
    rng.shuffle(order)
    offset = Fraction(rng.random())
    scale = Fraction(n_fill) / total
    cumulative, previous = Fraction(0), 0
    for name in order:
        cumulative += fill[name] * scale
        boundary = math.floor(cumulative + offset)
        extras[name] = boundary - previous
        previous = boundary
    return extras


def plan_epoch(
    categories: Mapping[str, tuple[int, float]],
    mode: Mode = "ed1",
    seed: int = 0,
    epoch: int = 0,
) -> dict[str, CategoryPlan]:
    """Copies per image of every category for one epoch.

    `categories` maps folder -> (n_images, raw multiply). ED1 (default): `whole = int(m)`, no
    extras, the same every epoch (m < 1 drops the folder). ED2: `whole = floor(m)` and the
    fractional fill, re-drawn from (seed, epoch), brings the epoch to exactly
    `floor(sum(n * m))` draws (sum evaluated exactly on the float values).
    """
    _check_categories(categories)
    if mode == "ed1":
        return {name: CategoryPlan(n, ed1_copies(raw), 0) for name, (n, raw) in categories.items()}
    if mode != "ed2":
        raise ValueError(f"multiply mode must be 'ed1' or 'ed2', got {mode!r}")
    extras = _ed2_extras(categories, seed, epoch)
    return {
        name: CategoryPlan(n, math.floor(raw), extras[name])
        for name, (n, raw) in categories.items()
    }


def epoch_size(plans: Mapping[str, CategoryPlan]) -> int:
    """Total draws in the epoch the plans describe."""
    return sum(p.n_images * p.whole + p.extras for p in plans.values())


# --- when in the epoch the copies come -------------------------------------------------------

MAX_COPY_ROUNDS = 16  # each round reads the slot's shards once more
_OFFSET_SCALE = 1 << 32


def copy_rounds(plans: Mapping[str, CategoryPlan]) -> int:
    """Rounds a streamed epoch spreads each image's copies over: the mean copies of a drawn
    image, rounded, in 1..MAX_COPY_ROUNDS. ED1 shuffles its repeated list whole, so an image's
    copies land across the epoch; a stream that emitted them all at one read would show a
    fan-art image with 95 copies dozens of times within a few steps."""
    drawn = sum(p.n_images if p.whole else p.extras for p in plans.values())
    if drawn == 0:
        return 1
    return max(1, min(MAX_COPY_ROUNDS, round(epoch_size(plans) / drawn)))


def copy_offset(seed: int, epoch: int, key: str) -> int:
    """An image's offset into the rounds, uniform in [0, 2**32), from (seed, epoch, key)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _OFFSET_SCALE


def copies_in_round(copies: int, round_: int, rounds: int, offset: int) -> int:
    """Of an image's `copies`, those in round `round_`: copy j goes to round
    floor((j + offset / 2**32) * rounds / copies), so the copies are evenly spaced over the
    rounds and sum to `copies` (integer arithmetic: no float edge cases)."""

    def before(r: int) -> int:  # copies j whose round is < r
        numerator = r * copies * _OFFSET_SCALE - offset * rounds
        return min(copies, max(0, -(-numerator // (_OFFSET_SCALE * rounds))))

    return before(round_ + 1) - before(round_)


# --- which images get the extra copy -----------------------------------------------------------


@lru_cache(maxsize=4096)
def _permutation_key(seed: int, epoch: int, category: str) -> int:
    data = f"{seed}:{epoch}:{category}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-mixed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def permute_index(index: int, n: int, key: int) -> int:
    """A keyed bijection of range(n): balanced Feistel network with cycle walking, O(1) memory."""
    if n <= 1:
        return index
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    x = index
    while True:
        left, right = x >> half, x & mask
        for r in range(_FEISTEL_ROUNDS):
            left, right = right, left ^ (_mix64(key ^ (r << 56) ^ right) & mask)
        x = (left << half) | right
        if x < n:  # cycle walking: re-encrypt until back inside range(n)
            return x


def draws_for_sample(
    category: str, category_index: int, plan: CategoryPlan, seed: int, epoch: int
) -> int:
    """Copies of image `category_index` of `category` in this epoch: `whole`, plus one if it
    is among the `extras` images picked by a permutation keyed by (seed, epoch, category)."""
    if not 0 <= category_index < plan.n_images:
        raise IndexError(
            f"category {category!r}: index {category_index} outside 0..{plan.n_images - 1}"
        )
    if plan.extras == 0:
        return plan.whole
    key = _permutation_key(seed, epoch, category)
    picked = permute_index(category_index, plan.n_images, key) < plan.extras
    return plan.whole + int(picked)


# --- dropped folders ---------------------------------------------------------------------------


def dropped_categories(
    categories: Mapping[str, tuple[int, float]], mode: Mode = "ed1"
) -> list[str]:
    """Folders with images that get no draw at all: ED1 when int(m) == 0, ED2 when m == 0."""
    _check_categories(categories)
    if mode == "ed1":
        return sorted(c for c, (n, raw) in categories.items() if n > 0 and int(raw) == 0)
    return sorted(c for c, (n, raw) in categories.items() if n > 0 and raw == 0)


def dropped_images(
    categories: Mapping[str, tuple[int, float]], mode: Mode = "ed1"
) -> dict[str, int]:
    """{folder: n_images} of the folders `dropped_categories` names."""
    return {name: categories[name][0] for name in dropped_categories(categories, mode)}


def dropped_message(categories: Mapping[str, tuple[int, float]], mode: Mode = "ed1") -> str | None:
    """One sentence naming every dropped folder, its image count and the fix; None if none."""
    dropped = dropped_images(categories, mode)
    if not dropped:
        return None
    listing = "; ".join(
        f"{name!r} ({n} images, multiply {categories[name][1]:g})" for name, n in dropped.items()
    )
    fix = (
        "raise their multiply.txt to >= 1 or train with data.multiply_mode=ed2"
        if mode == "ed1"
        else "give them a multiply > 0"
    )
    return (
        f"{len(dropped)} folder(s), {sum(dropped.values())} images, get 0 copies in {mode} "
        f"mode and never train: {listing}. To keep them, {fix}."
    )


def warn_dropped(
    categories: Mapping[str, tuple[int, float]],
    mode: Mode = "ed1",
    logger: logging.Logger | None = None,
) -> list[str]:
    """Log one warning naming every dropped folder (see `dropped_message`); return them."""
    message = dropped_message(categories, mode)
    if message is not None:
        (logger or log).warning(message)
    return dropped_categories(categories, mode)
