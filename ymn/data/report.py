"""`ymn-report SHARDS --out DIR`: the dataset as one planned epoch will see it, before a long run.

Statistics only (this module draws nothing): read the packed metadata of every shard (json
members only, images are seeked over), plan epoch 0 with the run's multiply mode and seed, and
count what the run will train on: category shares configured (the manifest's probabilities) vs
drawn, folders ED1 drops, images and draws per aspect bucket and the remainder each bucket
drops per epoch, caption lengths in CLIP tokens and the share over the limit, tag frequencies,
people per image, the 5x5 grid cells of the faces (the card's imbalance hypothesis) and which
characters appear together. Counts are given per image and per draw (an image drawn `copies`
times in the epoch counts `copies` times). Pictures and REPORT.md: `ymn.data.report_figures`.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any, Protocol

from ymn.data.buckets import bucket_table, nearest_bucket
from ymn.data.caption_tokens import token_counts
from ymn.data.captions import (
    UNKNOWN_CHARACTERS,
    CaptionConfig,
    build_caption,
    grid_cell,
    load_caption_config,
)
from ymn.data.decode import ShardSetupError, is_val_key, manifest_categories, resolve_shards
from ymn.data.multiply import draws_for_sample, dropped_images, epoch_size, plan_epoch
from ymn.data.preflight import _shard_metadata, check_shards

GRID = 5  # the asp5 face grid
MAX_CAPTIONS = 20_000  # captions built and tokenized at most (every k-th sample beyond)
RUN_STEPS = 40_000  # the recipe's run length, for "epochs in a run"


class DrawSettings(Protocol):
    """The `data` keys that decide epoch 0's draws and batches (a `StreamConfig` has them)."""

    resolution: int
    batch_size: int
    multiply_mode: str
    val_fraction: float
    seed: int
    caption: CaptionConfig


@dataclass
class ReportSettings:
    """`ymn-report`'s DrawSettings, from its command line (defaults: `data=folder`, seed 42)."""

    resolution: int = 512
    batch_size: int = 8
    multiply_mode: str = "ed1"
    val_fraction: float = 0.02
    seed: int = 42
    caption: CaptionConfig = field(default_factory=CaptionConfig)


@dataclass
class CategoryRow:
    """One folder in epoch 0: images, multiply, configured probability, draws and their share."""

    name: str
    n_images: int
    multiply: float
    configured: float  # the manifest's `prob` (the weight tree's share), normalised to sum 1
    copies: float  # planned draws per image (whole copies + the ED2 fill spread over images)
    draws: int  # training draws read from the shards (held-out keys excluded)
    drawn: float = 0.0  # draws / all training draws


@dataclass
class BucketRow:
    """One aspect bucket: images and draws of epoch 0, full batches and the dropped remainder."""

    bucket: tuple[int, int]
    images: int
    draws: int
    batches: int
    remainder: int  # draws that fill no batch (one slot; each slot drops up to batch_size - 1)


@dataclass
class DatasetReport:
    """Everything `ymn-report` shows; built by `build_report`, drawn by `report_figures`."""

    shards: list[str]
    settings: DrawSettings
    n_images: int = 0  # samples read from the shards
    n_manifest: int = 0  # the manifest's total_images
    n_val: int = 0  # held-out keys (val_fraction), never drawn for training
    n_undrawn: int = 0  # training keys with 0 copies in epoch 0 (ED1 drops)
    n_unknown: int = 0  # samples whose category or index the manifest does not know
    planned_draws: int = 0  # epoch_size of the plan (held-out keys included)
    draws: int = 0  # training draws of epoch 0 read from the shards
    shard_problems: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # ED1/ED2 folder -> images never drawn
    categories: list[CategoryRow] = field(default_factory=list)
    buckets: list[BucketRow] = field(default_factory=list)
    token_limit: int | None = None
    token_lengths: Counter = field(default_factory=Counter)  # n_tokens -> draws (sampled)
    token_images: Counter = field(default_factory=Counter)  # n_tokens -> images (sampled)
    captions_measured: int = 0
    tags: Counter = field(default_factory=Counter)  # tag -> images
    tag_draws: Counter = field(default_factory=Counter)  # tag -> draws
    people: Counter = field(default_factory=Counter)  # "0".."5", "many", "?" -> images
    people_draws: Counter = field(default_factory=Counter)
    face_cells: list[list[int]] = field(default_factory=lambda: _grid())  # [row][col], images
    face_cell_draws: list[list[int]] = field(default_factory=lambda: _grid())
    n_faces: int = 0
    characters: Counter = field(default_factory=Counter)  # name -> images it appears in
    pairs: Counter = field(default_factory=Counter)  # (a, b), a < b -> images with both

    @property
    def batches_per_epoch(self) -> int:
        return self.draws // self.settings.batch_size

    def share_over_limit(self, per: str = "draws") -> float:
        """Share of measured captions longer than the token limit, per draw or per image."""
        counts = self.token_lengths if per == "draws" else self.token_images
        total = sum(counts.values())
        if not total or self.token_limit is None:
            return 0.0
        return sum(w for n, w in counts.items() if n > self.token_limit) / total

    def category_groups(self, depth: int = 1) -> list[CategoryRow]:
        """The folders summed by their first `depth` path parts (e.g. `screenshots`)."""
        groups: dict[str, CategoryRow] = {}
        for row in self.categories:
            name = "/".join(row.name.split("/")[:depth]) or "."
            group = groups.setdefault(name, CategoryRow(name, 0, 0.0, 0.0, 0.0, 0))
            group.n_images += row.n_images
            group.configured += row.configured
            group.draws += row.draws
            group.drawn += row.drawn
            group.copies += row.copies * row.n_images  # divided below
        for group in groups.values():
            group.copies = group.copies / group.n_images if group.n_images else 0.0
            group.multiply = float("nan")  # folders of a group differ
        return sorted(groups.values(), key=lambda r: r.name)


def _grid() -> list[list[int]]:
    return [[0] * GRID for _ in range(GRID)]


def people_label(n_people: Any) -> str:
    """The histogram bin of a metadata `n_people`: "0".."N", "many", or "?" when absent."""
    if n_people == "many":
        return "many"
    if isinstance(n_people, int) and not isinstance(n_people, bool):
        return str(n_people)
    return "?"


def known_characters(meta: Mapping[str, Any]) -> list[str]:
    """The named characters of a sample, each once, in order ("unknown"/"ood" left out)."""
    names = [str(c) for c in meta.get("characters") or [] if c not in UNKNOWN_CHARACTERS]
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# Building the report
# ---------------------------------------------------------------------------------------------


def build_report(
    shards: Sequence[str],
    manifest: Mapping[str, Any],
    settings: DrawSettings,
    *,
    tokenizer: Any = None,
    max_captions: int = MAX_CAPTIONS,
    progress: bool = False,
    check: bool = True,
) -> DatasetReport:
    """The report of `shards` (with their `manifest`) as a run with `settings` draws epoch 0.
    With a tokenizer, captions of every k-th sample (about `max_captions`) are built without
    dropout and measured against `ymn.data.tokenizer.token_limit`. `check` compares the
    shards with the manifest (size, samples; sha256 when small) first."""
    report = DatasetReport(list(shards), settings, n_manifest=int(manifest.get("total_images", 0)))
    categories = manifest_categories(manifest)
    report.shard_problems = check_shards(report.shards, manifest) if check else []
    report.dropped = dropped_images(categories, settings.multiply_mode)  # type: ignore[arg-type]
    plans = plan_epoch(categories, settings.multiply_mode, settings.seed, 0)  # type: ignore[arg-type]
    report.planned_draws = epoch_size(plans)
    stride = max(1, -(-max(report.n_manifest, 1) // max(max_captions, 1)))
    draws: Counter = Counter()
    bucket_images: Counter = Counter()
    bucket_draws: Counter = Counter()
    captions: list[tuple[str, int]] = []
    for key, meta in _metadata(report.shards, progress):
        report.n_images += 1
        category, index = str(meta.get("category")), meta.get("category_index")
        plan = plans.get(category)
        if plan is None or not isinstance(index, int) or not 0 <= index < plan.n_images:
            report.n_unknown += 1
            continue
        held_out = is_val_key(key, settings.val_fraction)
        copies = 0 if held_out else draws_for_sample(category, index, plan, settings.seed, 0)
        _count_sample(report, meta, copies)  # per image: every known sample, held-out too
        if held_out:
            report.n_val += 1
            continue
        if copies == 0:
            report.n_undrawn += 1
            continue
        draws[category] += copies
        bucket = _bucket(meta, settings)
        bucket_images[bucket] += 1
        bucket_draws[bucket] += copies
        if tokenizer is not None and (report.n_images - 1) % stride == 0:
            rng = random.Random(f"report:{key}")
            captions.append((build_caption(meta, settings.caption, rng, dropout=False), copies))
    report.draws = sum(draws.values())
    report.categories = _category_rows(manifest, categories, plans, draws, report.draws)
    report.buckets = _bucket_rows(bucket_images, bucket_draws, settings.batch_size)
    if tokenizer is not None:
        _measure_captions(report, tokenizer, captions)
    return report


def _metadata(shards: Sequence[str], progress: bool) -> Iterable[tuple[str, dict[str, Any]]]:
    """(key, json) of every sample of every shard, with a progress bar over the shards."""
    from tqdm import tqdm

    for shard in tqdm(shards, desc="ymn-report", unit="shard", disable=not progress):
        yield from _shard_metadata(shard)


def _count_sample(report: DatasetReport, meta: Mapping[str, Any], copies: int) -> None:
    """Tags, people, face cells and characters of one sample (images, and `copies` draws)."""
    tags = list(dict.fromkeys(str(t) for t in meta.get("tags") or []))
    report.tags.update(tags)
    label = people_label(meta.get("n_people"))
    report.people[label] += 1
    for tag in tags:
        report.tag_draws[tag] += copies
    report.people_draws[label] += copies
    for box in meta.get("facepos") or []:
        col, row = grid_cell(box, GRID)
        report.face_cells[row][col] += 1
        report.face_cell_draws[row][col] += copies
        report.n_faces += 1
    names = known_characters(meta)
    report.characters.update(names)
    report.pairs.update(combinations(sorted(names), 2))


def _bucket(meta: Mapping[str, Any], settings: DrawSettings) -> tuple[int, int]:
    """The aspect bucket the stream crops this sample to (from the packed `size`)."""
    size = meta.get("size")
    if not (isinstance(size, list | tuple) and len(size) == 2 and min(size) > 0):
        return (0, 0)  # unknown size: pack with ymn-pack, which records it
    return _nearest((int(size[0]), int(size[1])), int(settings.resolution))


@lru_cache(maxsize=4096)
def _nearest(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    return nearest_bucket(size, bucket_table(resolution))


def _category_rows(manifest, categories, plans, draws: Counter, total: int) -> list[CategoryRow]:
    probs = {name: float(c.get("prob", 0.0)) for name, c in manifest["categories"].items()}
    prob_sum = sum(probs.values()) or 1.0
    rows = []
    for name, (n_images, multiply) in categories.items():
        plan = plans[name]
        copies = plan.whole + (plan.extras / n_images if n_images else 0.0)
        row = CategoryRow(name, n_images, multiply, probs[name] / prob_sum, copies, draws[name])
        row.drawn = draws[name] / total if total else 0.0
        rows.append(row)
    return rows


def _bucket_rows(images: Counter, draws: Counter, batch_size: int) -> list[BucketRow]:
    return [
        BucketRow(b, images[b], draws[b], draws[b] // batch_size, draws[b] % batch_size)
        for b in sorted(images, key=lambda b: (b[0] / b[1] if b[1] else 0.0, b))
    ]


def _measure_captions(report: DatasetReport, tokenizer: Any, captions: list[tuple[str, int]]):
    from ymn.data.tokenizer import token_limit

    report.token_limit = token_limit(tokenizer)
    report.captions_measured = len(captions)
    counts = token_counts(tokenizer, [text for text, _ in captions])
    for n, (_, copies) in zip(counts, captions, strict=True):
        report.token_lengths[n] += copies
        report.token_images[n] += 1


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ymn-report", description=main.__doc__)
    parser.add_argument("shards", help="a folder made by ymn-pack, or a brace/glob pattern")
    parser.add_argument("--out", type=Path, required=True, help="where REPORT.md and PNGs go")
    parser.add_argument("--manifest", help="manifest.json (default: beside the shards)")
    parser.add_argument("--resolution", type=int, default=512, help="data.resolution")
    parser.add_argument("--batch-size", type=int, default=8, help="data.batch_size")
    parser.add_argument("--multiply-mode", choices=("ed1", "ed2"), default="ed1")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="data.val_fraction")
    parser.add_argument("--seed", type=int, default=42, help="data.seed (the run's seed)")
    parser.add_argument("--caption", type=Path, help="a ymn/conf/caption/*.yaml (default asp)")
    parser.add_argument("--max-token-length", type=int, default=77, help="model.max_token_length")
    parser.add_argument("--max-captions", type=int, default=MAX_CAPTIONS)
    parser.add_argument("--depth", type=int, default=2, help="folder depth of the share plot")
    parser.add_argument("--steps", type=int, default=RUN_STEPS, help="planned training steps")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _tokenizer(max_token_length: int) -> Any:
    """SD's CLIP tokenizer at `max_token_length`, or None (said once) when it cannot load."""
    try:
        from ymn.data.tokenizer import load_clip_tokenizer, set_max_token_length

        tokenizer = load_clip_tokenizer()
    except (ImportError, FileNotFoundError) as exc:
        print(f"ymn-report: no caption token counts ({exc})", file=sys.stderr)
        return None
    set_max_token_length(tokenizer, max_token_length)
    return tokenizer


def main(argv: Sequence[str] | None = None) -> int:
    """`ymn-report SHARDS --out DIR`: the dataset as one planned epoch draws it, written as
    DIR/REPORT.md and PNGs. Exit 1 with a one-line reason when the shards cannot be read, and
    (after writing the report, which lists them) when a shard differs from the manifest."""
    args = _parser().parse_args(argv)
    try:
        if not any(c in args.shards for c in "{*?[") and not Path(args.shards).exists():
            raise ShardSetupError(f"{args.shards}: no such shard folder; pack one with ymn-pack")
        shards, manifest = resolve_shards(args.shards, args.manifest)
        caption = load_caption_config(args.caption) if args.caption else CaptionConfig()
        settings = ReportSettings(
            args.resolution, args.batch_size, args.multiply_mode, args.val_fraction, args.seed,
            caption,
        )  # fmt: skip
        from ymn.data.report_figures import write_report

        tokenizer = _tokenizer(args.max_token_length)
        report = build_report(
            shards,
            manifest,
            settings,
            tokenizer=tokenizer,
            max_captions=args.max_captions,
            progress=not args.no_progress,
        )
        path, _ = write_report(report, args.out, depth=args.depth, steps=args.steps)
    except (ShardSetupError, ValueError, OSError) as exc:
        print(f"ymn-report: {exc}", file=sys.stderr)
        return 1
    print(f"ymn-report: wrote {path} ({report.n_images} images, {report.draws} draws in epoch 0)")
    if report.shard_problems:
        print(
            f"ymn-report: {len(report.shard_problems)} damaged shard(s), first "
            f"{report.shard_problems[0]}; run `ymn-pack --verify` on the folder and re-pack",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
