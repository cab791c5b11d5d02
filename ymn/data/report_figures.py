"""The pictures and REPORT.md of a `DatasetReport` (`ymn-report`, and the training-start callback
`ymn.callbacks.dataset_report`). matplotlib with the Agg backend: no display needed."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from ymn.data.report import GRID, DatasetReport

TOP_TAGS = 30
TOP_CHARACTERS = 20
FIGURES = ("categories", "buckets", "caption_tokens", "tags", "people", "face_cells", "characters")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def _bars(ax, labels: Sequence[str], series: dict[str, Sequence[float]], horizontal=False):
    """Side-by-side bars, one group per label, one colour per series."""
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        positions = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        (ax.barh if horizontal else ax.bar)(positions, values, width, label=name)
    ticks = range(len(labels))
    if horizontal:
        ax.set_yticks(list(ticks), labels, fontsize=7)
        ax.invert_yaxis()
    else:
        ax.set_xticks(list(ticks), labels, rotation=45, ha="right", fontsize=7)
    if len(series) > 1:
        ax.legend(fontsize=8)


def _shares(counts: Counter) -> list[float]:
    total = sum(counts.values()) or 1
    return [v / total for v in counts.values()]


def people_order(labels) -> list[str]:
    """Histogram bins in reading order: 0, 1, 2, ..., many, ?."""
    return sorted(labels, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def plot_categories(report: DatasetReport, path: Path, depth: int = 2) -> Path:
    groups = report.category_groups(depth)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(groups)))
    series = {"configured (manifest prob)": [g.configured for g in groups]}
    series["drawn in epoch 0"] = [g.drawn for g in groups]
    _bars(ax, [g.name for g in groups], series, horizontal=True)
    ax.set_xlabel("share")
    ax.set_title(f"Category shares, configured vs drawn ({report.settings.multiply_mode})")
    return _save(fig, path)


def plot_buckets(report: DatasetReport, path: Path) -> Path:
    rows = report.buckets
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{w}x{h}" for w, h in (r.bucket for r in rows)]
    _bars(ax, labels, {"images": [r.images for r in rows], "draws": [r.draws for r in rows]})
    for j, row in enumerate(rows):
        ax.annotate(f"-{row.remainder}", (j + 0.2, row.draws), ha="center", va="bottom",
                    fontsize=7)  # fmt: skip
    ax.set_ylabel("count")
    ax.set_title(
        f"Aspect buckets at {report.settings.resolution} px "
        f"(-N: draws dropped as the bucket's remainder, batch {report.settings.batch_size})"
    )
    return _save(fig, path)


def plot_caption_tokens(report: DatasetReport, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    lengths = sorted(report.token_lengths)
    if lengths:
        ax.bar(lengths, [report.token_lengths[n] for n in lengths], width=1.0)
        ax.axvline(report.token_limit + 0.5, color="red", linestyle="--", label="limit")
        ax.legend(fontsize=8)
    ax.set_xlabel("caption length, CLIP tokens (start and end included)")
    ax.set_ylabel("draws")
    ax.set_title(
        f"Caption lengths: {100 * report.share_over_limit():.1f}% of draws over "
        f"{report.token_limit} tokens ({report.captions_measured} captions measured)"
    )
    return _save(fig, path)


def plot_tags(report: DatasetReport, path: Path) -> Path:
    top = report.tags.most_common(TOP_TAGS)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.22 * len(top)))
    _bars(ax, [t for t, _ in top], {"images": [n for _, n in top]}, horizontal=True)
    ax.set_title(f"Top {len(top)} tags of {len(report.tags)} (images carrying each)")
    return _save(fig, path)


def plot_people(report: DatasetReport, path: Path) -> Path:
    labels = people_order(report.people)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    images = Counter({k: report.people[k] for k in labels})
    draws = Counter({k: report.people_draws[k] for k in labels})
    _bars(ax, labels, {"images": _shares(images), "draws": _shares(draws)})
    ax.set_xlabel("n_people")
    ax.set_ylabel("share")
    ax.set_title("People per image")
    return _save(fig, path)


def plot_face_cells(report: DatasetReport, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    panels = (("faces (images)", report.face_cells), ("faces (draws)", report.face_cell_draws))
    for ax, (title, grid) in zip(axes, panels, strict=True):
        image = ax.imshow(grid, cmap="viridis")
        total = sum(map(sum, grid)) or 1
        for row in range(GRID):
            for col in range(GRID):
                share = 100 * grid[row][col] / total
                ax.text(col, row, f"{share:.0f}%", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(GRID), ["fhll", "fhml", "fhmd", "fhmr", "fhri"], fontsize=7)
        ax.set_yticks(range(GRID), ["fvtp", "fvmt", "fvmd", "fvmb", "fvbt"], fontsize=7)
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"Face centres on the 5x5 caption grid ({report.n_faces} faces)")
    return _save(fig, path)


def cooccurrence(report: DatasetReport, top: int = TOP_CHARACTERS):
    """(names, matrix): images with both characters; the diagonal, images with the one."""
    names = [n for n, _ in report.characters.most_common(top)]
    matrix = [
        [report.characters[a] if a == b else report.pairs[tuple(sorted((a, b)))] for b in names]
        for a in names
    ]
    return names, matrix


def plot_characters(report: DatasetReport, path: Path) -> Path:
    names, matrix = cooccurrence(report)
    plt = _pyplot()
    side = 3 + 0.35 * len(names)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    if names:
        image = ax.imshow(matrix, cmap="magma")
        fig.colorbar(image, ax=ax, fraction=0.046)
        for i, row in enumerate(matrix):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center", color="c", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title("Characters together (images; diagonal: images with the character)")
    return _save(fig, path)


def write_figures(report: DatasetReport, out: Path, depth: int = 2) -> dict[str, Path]:
    """One PNG per figure in `out` (caption lengths only when they were measured)."""
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Callable[[DatasetReport, Path], Path]] = {
        "categories": lambda r, p: plot_categories(r, p, depth),
        "buckets": plot_buckets,
        "caption_tokens": plot_caption_tokens,
        "tags": plot_tags,
        "people": plot_people,
        "face_cells": plot_face_cells,
        "characters": plot_characters,
    }
    if report.token_limit is None:
        plots.pop("caption_tokens")
    return {name: plot(report, out / f"{name}.png") for name, plot in plots.items()}


# ---------------------------------------------------------------------------------------------
# REPORT.md
# ---------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _summary(r: DatasetReport, steps: int) -> list[str]:
    s = r.settings
    epochs = steps / r.batches_per_epoch if r.batches_per_epoch else math.inf
    return [
        "# Dataset report",
        "",
        f"Shards: {len(r.shards)} (`{Path(r.shards[0]).parent if r.shards else '?'}`). "
        f"Settings: resolution {s.resolution}, batch size {s.batch_size}, multiply mode "
        f"{s.multiply_mode}, seed {s.seed}, val_fraction {s.val_fraction}.",
        "",
        *_table(
            ["", "value"],
            [
                ["images read (manifest)", f"{r.n_images} ({r.n_manifest})"],
                ["held out for validation", r.n_val],
                ["training images never drawn (0 copies)", r.n_undrawn],
                ["samples the manifest does not know", r.n_unknown],
                ["planned draws in epoch 0 (held-out included)", r.planned_draws],
                ["training draws in epoch 0", r.draws],
                [f"batches of {s.batch_size} per epoch (one slot)", r.batches_per_epoch],
                [f"epochs in {steps} steps", f"{epochs:.1f}"],
                ["faces", r.n_faces],
            ],
        ),
    ]


def _problems(r: DatasetReport) -> list[str]:
    lines = ["## Damaged shards", ""]
    if not r.shard_problems:
        return lines + ["None: every shard matches the manifest.", ""]
    lines += [f"- {p}" for p in r.shard_problems]
    return lines + ["", "Run `ymn-pack --verify` on the folder, then re-pack.", ""]


def _dropped(r: DatasetReport) -> list[str]:
    lines = [f"## Folders dropped by multiply ({r.settings.multiply_mode})", ""]
    if not r.dropped:
        return lines + ["None.", ""]
    rows = [[name, n] for name, n in r.dropped.items()]
    lines += [f"{sum(r.dropped.values())} images in {len(rows)} folders get 0 copies:", ""]
    return lines + _table(["folder", "images"], rows)


def _categories(r: DatasetReport, depth: int) -> list[str]:
    def rows(items, multiply: bool):
        return [
            [c.name, c.n_images, *([f"{c.multiply:g}"] if multiply else []),
             f"{c.copies:.2f}", c.draws, _pct(c.configured), _pct(c.drawn)]
            for c in items
        ]  # fmt: skip

    head = ["category", "images", "copies/image", "draws", "configured", "drawn"]
    lines = [
        "## Category shares: configured vs drawn in epoch 0", "", "![](categories.png)", "",
        "Configured: the manifest's probabilities (weights CSV or category tree). Drawn: each "
        "folder's share of epoch 0's training draws (held-out keys excluded).", "",
    ]  # fmt: skip
    for d in sorted({1, depth}):
        lines += [f"Folders grouped by their first {d} path part{'s' if d > 1 else ''}:", ""]
        lines += _table(head, rows(r.category_groups(d), False))
    lines += ["<details><summary>Every folder</summary>", ""]
    lines += _table([*head[:2], "multiply", *head[2:]], rows(r.categories, True))
    return lines + ["</details>", ""]


def _buckets(r: DatasetReport) -> list[str]:
    rows = [[f"{b.bucket[0]}x{b.bucket[1]}", b.images, b.draws, b.batches, b.remainder]
            for b in r.buckets]  # fmt: skip
    dropped = sum(b.remainder for b in r.buckets)
    return [
        "## Aspect buckets", "", "![](buckets.png)", "",
        *_table(["bucket", "images", "draws", "full batches", "remainder dropped"], rows),
        f"{dropped} draws per epoch fill no batch ({_pct(dropped / max(r.draws, 1))}); with "
        "several ranks or workers each slot drops its own remainders.", "",
    ]  # fmt: skip


def _captions(r: DatasetReport) -> list[str]:
    lines = ["## Caption lengths", ""]
    if r.token_limit is None:
        return lines + ["Not measured: no CLIP tokenizer could be loaded.", ""]
    lengths = sorted(r.token_lengths.elements())
    median = lengths[len(lengths) // 2] if lengths else 0
    return lines + [
        "![](caption_tokens.png)", "",
        f"{r.captions_measured} captions (no dropout) measured against {r.token_limit} tokens: "
        f"{_pct(r.share_over_limit('draws'))} of draws and {_pct(r.share_over_limit('images'))} "
        f"of images are over the limit and lose their tail; median {median}, longest "
        f"{max(lengths, default=0)} tokens.", "",
    ]  # fmt: skip


def _tags_people_faces(r: DatasetReport) -> list[str]:
    tag_rows = [[t, n, r.tag_draws[t]] for t, n in r.tags.most_common(TOP_TAGS)]
    labels = people_order(r.people)
    people_rows = [[k, r.people[k], r.people_draws[k]] for k in labels]
    grid_rows = [[f"row {i}", *row] for i, row in enumerate(r.face_cells)]
    return [
        f"## Tags ({len(r.tags)} distinct)", "", "![](tags.png)", "",
        *_table(["tag", "images", "draws"], tag_rows),
        "## People per image", "", "![](people.png)", "",
        *_table(["n_people", "images", "draws"], people_rows),
        "## Face cells (5x5 caption grid)", "", "![](face_cells.png)", "",
        "Faces per cell, images (row 0 = top, column 0 = left):", "",
        *_table(["", *[f"col {c}" for c in range(GRID)]], grid_rows),
    ]  # fmt: skip


def _characters(r: DatasetReport) -> list[str]:
    pairs = [[f"{a} + {b}", n] for (a, b), n in r.pairs.most_common(15)]
    singles = [[name, n] for name, n in r.characters.most_common(TOP_CHARACTERS)]
    return [
        "## Characters", "", "![](characters.png)", "",
        *_table(["character", "images"], singles),
        *_table(["pair", "images together"], pairs),
    ]  # fmt: skip


def write_report(
    report: DatasetReport, out: str | Path, *, depth: int = 2, steps: int = 40_000
) -> tuple[Path, dict[str, Path]]:
    """Write `out/REPORT.md` and its PNGs; return (REPORT.md, {figure name: PNG})."""
    out = Path(out)
    figures = write_figures(report, out, depth)
    lines = [
        *_summary(report, steps),
        *_problems(report),
        *_dropped(report),
        *_categories(report, depth),
        *_buckets(report),
        *_captions(report),
        *_tags_people_faces(report),
        *_characters(report),
    ]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, figures
