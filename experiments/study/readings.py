"""What a study reads from a finished run: per-probe-image terms, the metrics built from them,
and the learning curve.

Every metric is a function of the probe images' scores (`ymn.probes.scores`, one row per
image), so the same code gives a run's value, a seed-pooled arm value and a bootstrap resample.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ymn.probes.scores import cell_scores, record_scores
from ymn.run_dir import probe_pass_files

Terms = dict[str, float]
Metric = Callable[["Columns"], float]


def record_terms(record: Mapping[str, Any]) -> Terms:
    """The additive terms of one probe image (ymn.probes.scores); metrics are sums of these."""
    return record_scores(record)


def pass_terms(records: Sequence[Mapping[str, Any]]) -> list[Terms]:
    """Each probe image's terms, plus its detections scored against the cells asked of the next
    image with the same requested count (`cell_hits_shuffled` of `cell_targets_shuffled`): the
    image-to-prompt binding broken, the probe set's position prior and the face count kept."""
    rows = [record_terms(r) for r in records]
    by_count: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        by_count.setdefault(int(record["count"]), []).append(index)
    for members in by_count.values():
        for place, index in enumerate(members):
            partner = records[members[(place + 1) % len(members)]]
            swapped = cell_scores({**records[index], "cells": partner.get("cells")})
            rows[index]["cell_hits_shuffled"] = swapped["cell_hits"]
            rows[index]["cell_targets_shuffled"] = swapped["cell_targets"]
    return rows


Columns = dict[str, np.ndarray]


def columns(rows: Sequence[Terms]) -> Columns:
    """Rows of terms as one array per term (what the metrics read)."""
    keys = rows[0].keys() if rows else ()
    return {k: np.array([r[k] for r in rows], dtype=float) for k in keys}


def _ratio(num: str, den: str, where: Callable[[Columns], np.ndarray] | None = None) -> Metric:
    def metric(cols: Columns) -> float:
        mask = np.ones(len(cols[den]), bool) if where is None else where(cols)
        total = cols[den][mask].sum()
        return float(cols[num][mask].sum() / total) if total else math.nan

    return metric


def _cell_gain(cols: Columns) -> float:
    """Cell accuracy minus the same detections' accuracy against shuffled targets (0: the grid
    tokens are not used at all, whatever the layout prior gives)."""
    own, shuffled = cols["cell_targets"].sum(), cols["cell_targets_shuffled"].sum()
    if not own or not shuffled:
        return math.nan
    return float(cols["cell_hits"].sum() / own - cols["cell_hits_shuffled"].sum() / shuffled)


def _mean(
    key: Callable[[Columns], np.ndarray], where: Callable[[Columns], np.ndarray] | None = None
) -> Metric:
    def metric(cols: Columns) -> float:
        values = key(cols)
        if where is not None:
            values = values[where(cols)]
        return float(values.mean()) if len(values) else math.nan

    return metric


def _slope(cols: Columns) -> float:
    """Least-squares slope of detected on requested count (1 = counts track the prompt)."""
    x, y = cols["asked"], cols["detected"]
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan
    x_centred = x - x.mean()
    return float((x_centred * (y - y.mean())).sum() / (x_centred**2).sum())


def _asked(k: int) -> Callable[[Columns], np.ndarray]:
    return lambda c: c["asked"] == k


METRICS: dict[str, tuple[str, Metric]] = {
    "count/exact": ("exact count accuracy", _mean(lambda c: c["exact"])),
    "count/abs_err": (
        "mean |detected − asked|",
        _mean(lambda c: np.abs(c["detected"] - c["asked"])),
    ),
    "count/bias": ("mean detected − asked", _mean(lambda c: c["detected"] - c["asked"])),
    "count/slope": ("slope of detected on asked", _slope),
    **{
        f"count/detected@{k}": (
            f"mean detected, asked {k}",
            _mean(lambda c: c["detected"], _asked(k)),
        )
        for k in range(1, 6)
    },
    "count/3to5@3": (  # the card's "3people gives 3–5"
        "share drawing 3–5 people, asked 3",
        _mean(lambda c: (c["detected"] >= 3) & (c["detected"] <= 5), _asked(3)),
    ),
    **{
        f"count/exact@{k}": (f"exact accuracy, asked {k}", _mean(lambda c: c["exact"], _asked(k)))
        for k in range(1, 6)
    },
    "grid/cell_acc": ("face-grid cell accuracy", _ratio("cell_hits", "cell_targets")),
    "grid/cell_gain": ("cell accuracy above shuffled targets", _cell_gain),
    "grid/chebyshev": ("mean Chebyshev distance (matched faces)", _ratio("cheb_sum", "cheb_n")),
    "grid/attn_in_target": ("attention mass in the target cell", _ratio("attn_mass", "attn_n")),
    "identity/lead@1": (
        "named lead drawn, `1person, <name>`",  # the demo's first reading (issue 15 item 4)
        _mean(lambda c: c["id_correct"], _asked(1)),
    ),
    "identity/char_acc": ("identity accuracy", _ratio("id_correct", "id_matched")),
    "identity/bleed": ("bleed rate", _ratio("id_bleed", "id_matched")),
    **{
        f"identity/char_acc@{k}": (
            f"identity accuracy, {k} characters",
            _ratio("id_correct", "id_matched", _asked(k)),
        )
        for k in range(1, 6)
    },
    **{
        f"identity/bleed@{k}": (
            f"bleed rate, {k} characters",
            _ratio("id_bleed", "id_matched", _asked(k)),
        )
        for k in range(1, 6)
    },
}


@dataclass
class RunReading:
    """One finished run: its final probe records (as terms) and its curve."""

    arm: str
    seed: int
    step: int
    terms: Columns
    records: list[dict[str, Any]]
    curve: dict[int, dict[str, float]] = field(default_factory=dict)
    val_loss: dict[int, float] = field(default_factory=dict)

    def value(self, metric: str) -> float:
        return METRICS[metric][1](self.terms)


def probe_files(run_dir: Path) -> list[Path]:
    """The run's probe passes, in step order."""
    return probe_pass_files(run_dir)


def _val_losses(run_dir: Path) -> dict[int, float]:
    import csv

    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(handle)
                if r.get("val/loss")}  # fmt: skip


def read_run(run_dir: Path, arm: str, seed: int, metrics: Sequence[str]) -> RunReading:
    """Read a finished run; FileNotFoundError when it wrote no probe pass."""
    files = probe_files(run_dir)
    if not files:
        raise FileNotFoundError(f"{run_dir}: no probes/step_*.json; did the run finish?")
    curve: dict[int, dict[str, float]] = {}
    for path in files:  # step order: the last pass read is the final one
        final = json.loads(path.read_text())
        terms = columns(pass_terms(final["records"]))
        curve[int(final["step"])] = {m: METRICS[m][1](terms) for m in metrics}
    return RunReading(
        arm, seed, int(final["step"]), terms, final["records"], curve, _val_losses(run_dir)
    )
