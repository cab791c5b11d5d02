"""Rates with 95 % intervals: Wilson for independent trials, widened by an image bootstrap when
the trials (faces) cluster in images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Two-sided Wilson score interval of k successes in n trials ((nan, nan) when n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict[str, Any]:
    """{value, k, n, ci95, ci_method} of k successes in n independent trials."""
    lo, hi = wilson(int(k), int(n))
    return {
        "value": k / n if n else None,
        "k": int(k),
        "n": int(n),
        "ci95": [lo, hi] if n else None,
        "ci_method": "wilson",
    }


def clustered_rate(
    hits: Sequence[int], totals: Sequence[int], seed: int = 0, resamples: int = 2000
) -> dict[str, Any]:
    """A rate over trials grouped by image (hits[i] of totals[i] in image i).

    Faces of one image are not independent, so the interval is the envelope of the Wilson
    interval on all trials and the percentile interval of a bootstrap over images (the
    bootstrap alone collapses to a point at 0 or 1, Wilson alone is too narrow for clusters).
    """
    h = np.asarray(hits, dtype=float)
    t = np.asarray(totals, dtype=float)
    k, n = int(h.sum()), int(t.sum())
    out = rate(k, n)
    out["n_images"] = int(np.sum(t > 0))
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(h), size=(resamples, len(h)))
    sums_t = t[index].sum(axis=1)
    ratios = h[index].sum(axis=1)[sums_t > 0] / sums_t[sums_t > 0]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    wl, wh = out["ci95"]
    out["ci95"] = [float(min(lo, wl)), float(max(hi, wh))]
    out["ci_method"] = "wilson ∪ image bootstrap"
    return out
