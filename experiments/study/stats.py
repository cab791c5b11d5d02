"""Intervals and tests for study arms.

Over seeds: mean ± 95 % t-interval of the per-run values (the seed-to-seed spread, what a
rerun would see). Between an arm and the baseline: probe images are paired — same training seed,
same probe layout and requested count, same sampling seed — so the difference on the pooled
images gets a paired bootstrap 95 % CI (images resampled with replacement within each training
seed) and a two-sided paired permutation p-value (each pair's two arm labels swapped at random).
Both measure the probe pass's sampling error between the two trained models; the difference
within each training seed (`per_seed`) shows whether another training run agrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from experiments.study.readings import METRICS, Columns, RunReading


def t_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean and half-width of the two-sided 95 % t-interval (None for fewer than 2 values)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if not n:
        return {"mean": None, "ci95": None, "n": 0}
    mean = float(np.mean(finite))
    half = None
    if n >= 2:
        half = float(stats.t.ppf(0.975, n - 1) * np.std(finite, ddof=1) / math.sqrt(n))
    return {"mean": mean, "ci95": half, "n": n}


def paired_columns(
    arm: Sequence[RunReading], baseline: Sequence[RunReading]
) -> tuple[Columns, Columns, np.ndarray]:
    """The two arms' image terms over their shared training seeds, pair by pair, and each
    pair's seed stratum. ValueError when a seed's probe passes differ in requested counts."""
    by_seed = {r.seed: r for r in baseline}
    left, right, strata = [], [], []
    for run in arm:
        other = by_seed.get(run.seed)
        if other is None:
            continue
        if not np.array_equal(run.terms["asked"], other.terms["asked"]):
            raise ValueError(
                f"seed {run.seed}: arms {run.arm} and {other.arm} ran different probe passes "
                "(their requested counts differ); give every arm the same probes settings"
            )
        left.append(run.terms)
        right.append(other.terms)
        strata.append(np.full(len(run.terms["asked"]), run.seed))
    if not left:
        return {}, {}, np.array([])
    join = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
    return join(left), join(right), np.concatenate(strata)


def _take(cols: Columns, index: np.ndarray) -> Columns:
    return {k: v[index] for k, v in cols.items()}


def _stratified_resample(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    picks = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        picks.append(rng.choice(members, len(members)))
    return np.concatenate(picks)


def per_seed_differences(
    metric: str, left: Columns, right: Columns, strata: np.ndarray
) -> dict[str, float | None]:
    """arm − baseline of `metric` within each training seed (None where not finite)."""
    fn = METRICS[metric][1]
    out: dict[str, float | None] = {}
    for value in np.unique(strata):
        mask = strata == value
        diff = fn(_take(left, mask)) - fn(_take(right, mask))
        out[str(int(value))] = float(diff) if math.isfinite(diff) else None
    return out


def pooled_interval(
    metric: str, runs: Sequence[RunReading], n_resamples: int = 2000, seed: int = 0
) -> list[float] | None:
    """Bootstrap 95 % CI of `metric` on an arm's pooled images (resampled within each training
    seed): the sampling error of the probe pass, not the seed-to-seed spread."""
    if not runs:
        return None
    fn = METRICS[metric][1]
    cols = {k: np.concatenate([r.terms[k] for r in runs]) for k in runs[0].terms}
    strata = np.concatenate([np.full(len(r.terms["asked"]), r.seed) for r in runs])
    rng = np.random.default_rng(seed)
    boots = [fn(_take(cols, _stratified_resample(strata, rng))) for _ in range(n_resamples)]
    finite = np.array([v for v in boots if math.isfinite(v)])
    if not len(finite):
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]


def paired_difference(
    metric: str,
    arm: Sequence[RunReading],
    baseline: Sequence[RunReading],
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """arm − baseline of `metric` on the pooled paired images: estimate, bootstrap 95 % CI,
    permutation p-value, the number of paired images and the difference within each seed."""
    fn = METRICS[metric][1]
    left, right, strata = paired_columns(arm, baseline)
    n = len(strata)
    empty = {"diff": None, "ci95": None, "p": None, "n_images": n}
    if not n:
        return empty
    observed = fn(left) - fn(right)
    if not math.isfinite(observed):
        return empty
    rng = np.random.default_rng(seed)
    boots, null = [], []
    for _ in range(n_resamples):
        index = _stratified_resample(strata, rng)
        boots.append(fn(_take(left, index)) - fn(_take(right, index)))
        swap = rng.random(n) < 0.5
        a = {k: np.where(swap, right[k], v) for k, v in left.items()}
        b = {k: np.where(swap, v, right[k]) for k, v in left.items()}
        null.append(fn(a) - fn(b))
    boots_arr = np.array([v for v in boots if math.isfinite(v)])
    null_arr = np.array([v for v in null if math.isfinite(v)])
    if not len(boots_arr) or not len(null_arr):
        return empty
    low, high = np.percentile(boots_arr, [2.5, 97.5])
    extreme = int(np.sum(np.abs(null_arr) >= abs(observed) - 1e-12))
    return {
        "diff": float(observed),
        "ci95": [float(low), float(high)],
        "p": float((extreme + 1) / (len(null_arr) + 1)),
        "n_images": n,
        "per_seed": per_seed_differences(metric, left, right, strata),
    }
