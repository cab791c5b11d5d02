"""Count metrics of a sample-based probe: requested vs detected people per image (pure numpy).

Reading: exact accuracy is noisy at small sample sizes; compare arms on the
mean detected count per requested count, the slope and the correlation (with its permutation
p-value), not only on exact accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def permutation_p_value(
    x: np.ndarray, y: np.ndarray, n_permutations: int = 1000, seed: int = 0
) -> float:
    """One-sided p-value of a positive Pearson correlation: (1 + #{perm r >= r}) / (1 + n)."""
    observed = _pearson(x, y)
    if np.isnan(observed) or n_permutations <= 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    xc = (x - x.mean()) / x.std()
    yc = (y - y.mean()) / y.std()
    shuffled = np.stack([rng.permutation(yc) for _ in range(n_permutations)])
    null = shuffled @ xc / len(xc)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_permutations))


def confusion_matrix(
    requested: Sequence[int], detected: Sequence[int], labels: Sequence[int] | None = None
) -> dict[str, list]:
    """Rows: requested count, columns: detected count; `labels` defaults to 0..max seen."""
    if labels is None:
        labels = list(range(int(max([*requested, *detected], default=0)) + 1))
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for r, d in zip(requested, detected, strict=True):
        if r in index and d in index:
            matrix[index[r], index[d]] += 1
    return {"labels": list(labels), "matrix": matrix.tolist()}


def count_metrics(
    requested: Sequence[int],
    detected: Sequence[int],
    *,
    n_permutations: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Exact accuracy, MAE, signed bias (detected − requested), least-squares slope of detected
    on requested, Pearson correlation with a seeded permutation p-value, mean detected per
    requested count, and the confusion matrix. Undefined statistics are NaN.
    """
    if len(requested) != len(detected):
        raise ValueError(f"{len(requested)} requested counts but {len(detected)} detected counts")
    if len(requested) == 0:
        raise ValueError("count_metrics needs at least one image")
    r = np.asarray(requested, dtype=float)
    d = np.asarray(detected, dtype=float)
    slope = intercept = float("nan")
    if r.std() > 0:
        slope, intercept = (float(v) for v in np.polyfit(r, d, 1))
    per_count = {str(int(c)): float(d[r == c].mean()) for c in np.unique(r)}
    return {
        "exact_acc": float(np.mean(r == d)),
        "mae": float(np.mean(np.abs(d - r))),
        "signed_bias": float(np.mean(d - r)),
        "slope": slope,
        "intercept": intercept,
        "corr": _pearson(r, d),
        "corr_p": permutation_p_value(r, d, n_permutations, seed),
        "mean_detected": per_count,
        "n": int(len(r)),
        "confusion": confusion_matrix([int(v) for v in r], [int(v) for v in d]),
    }


def write_confusion_png(confusion: dict[str, list], path: Path, title: str = "") -> Path:
    """Save a confusion matrix (from `confusion_matrix`) as an annotated heat map PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = confusion["labels"]
    matrix = np.asarray(confusion["matrix"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), [str(v) for v in labels])
    ax.set_yticks(range(len(labels)), [str(v) for v in labels])
    ax.set_xlabel("detected")
    ax.set_ylabel("requested")
    ax.set_title(title, fontsize=9)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        color = "white" if value > threshold else "black"
        ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
