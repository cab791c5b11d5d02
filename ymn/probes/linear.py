"""Linear probes on frozen UNet features: is count / face position linearly decodable?

Features: forward-hook outputs of named UNet blocks (default the mid block and up_blocks.1),
spatially mean-pooled (for count) or pooled to the caption grid (for 25-cell occupancy).
Probes: closed-form ridge, one-vs-rest for count classes and per cell for occupancy, scored
out-of-fold with seeded k-fold cross-validation. Controls: the same probe on shuffled labels
(should sit at chance) and on the caption's text embedding alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from ymn.probes.attention import pool_to_grid

DEFAULT_FEATURE_LAYERS = {"mid": "mid_block", "up1": "up_blocks.1"}


# ----------------------------------------------------------------------------- features


@contextmanager
def capture_features(
    unet: torch.nn.Module, layers: Mapping[str, str] = DEFAULT_FEATURE_LAYERS
) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, `store[name]` is the last output [B, C, h, w] of each named submodule."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name, path in layers.items():
        try:
            module = unet.get_submodule(path)
        except AttributeError as err:
            raise ValueError(f"feature layer {name}: the UNet has no submodule {path!r}") from err

        def hook(_module: Any, _inputs: Any, output: Any, name: str = name) -> None:
            out = output[0] if isinstance(output, tuple) else output
            store[name] = out.detach().float()

        handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def pool_features(output: torch.Tensor, grid: int) -> dict[str, np.ndarray]:
    """{"mean": [B, C], "grid": [B, C * grid * grid]} from a block output [B, C, h, w]."""
    mean = output.mean(dim=(2, 3))
    cells = pool_to_grid(output.permute(0, 2, 3, 1), grid)  # [B, g, g, C]
    return {"mean": mean.cpu().numpy(), "grid": cells.flatten(1).cpu().numpy()}


# ----------------------------------------------------------------------------- probes


def kfold_indices(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded shuffled k-fold (train, test) index pairs; folds is capped at n."""
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    return [(np.concatenate(parts[:i] + parts[i + 1 :]), parts[i]) for i in range(folds)]


def ridge_fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    alpha: float,
    intercept: bool = True,
) -> np.ndarray:
    """Closed-form ridge (features standardised on the train fold, λ = alpha · n_features);
    the dual form is used when there are more features than examples. intercept=False leaves
    out the train-fold label mean (see `cv_grid_auroc`)."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    xtr = (x_train - mean) / std
    xte = (x_test - mean) / std
    y_mean = y_train.mean(axis=0)
    yc = y_train - y_mean
    lam = alpha * xtr.shape[1]
    n, d = xtr.shape
    if d > n:
        dual = np.linalg.solve(xtr @ xtr.T + lam * np.eye(n), yc)
        weights = xtr.T @ dual
    else:
        weights = np.linalg.solve(xtr.T @ xtr + lam * np.eye(d), xtr.T @ yc)
    return xte @ weights + (y_mean if intercept else 0.0)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN if one class is absent."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cv_count_accuracy(
    features: np.ndarray, counts: Sequence[int], folds: int = 5, alpha: float = 1.0, seed: int = 0
) -> float:
    """Out-of-fold accuracy of a one-vs-rest ridge classifier of the count."""
    counts = np.asarray(counts)
    hits = 0
    for train, test in kfold_indices(len(counts), folds, seed):
        classes = np.unique(counts[train])
        onehot = (counts[train][:, None] == classes[None, :]).astype(float)
        scores = ridge_fit_predict(features[train], onehot, features[test], alpha)
        hits += int(np.sum(classes[np.argmax(scores, axis=1)] == counts[test]))
    return hits / len(counts)


def cv_grid_auroc(
    features: np.ndarray,
    occupancy: np.ndarray,
    folds: int = 5,
    alpha: float = 1.0,
    seed: int = 0,
) -> float:
    """Mean over cells (with both classes present) of the out-of-fold AUROC of cell occupancy.

    Scores leave out each fold's label mean: pooled across folds it would rank positives low
    (a fold holding more positives trains on fewer), pushing chance below 0.5 on small sets.
    """
    occupancy = np.asarray(occupancy, dtype=float)
    scores = np.zeros_like(occupancy)
    for train, test in kfold_indices(len(occupancy), folds, seed):
        scores[test] = ridge_fit_predict(
            features[train], occupancy[train], features[test], alpha, intercept=False
        )
    per_cell = [auroc(scores[:, c], occupancy[:, c]) for c in range(occupancy.shape[1])]
    per_cell = [v for v in per_cell if not np.isnan(v)]
    return float(np.mean(per_cell)) if per_cell else float("nan")


def probe_scores(
    mean_features: np.ndarray,
    grid_features: np.ndarray,
    counts: np.ndarray,
    occupancy: np.ndarray,
    *,
    folds: int,
    alpha: float,
    seed: int,
) -> dict[str, float]:
    """{"count_acc", "grid_auroc"} of one feature set."""
    return {
        "count_acc": cv_count_accuracy(mean_features, counts, folds, alpha, seed),
        "grid_auroc": cv_grid_auroc(grid_features, occupancy, folds, alpha, seed),
    }


def linear_probe_metrics(
    features: Mapping[str, Mapping[str, np.ndarray]],
    counts: Sequence[int],
    occupancy: np.ndarray,
    *,
    text_features: np.ndarray | None = None,
    folds: int = 5,
    alpha: float = 1.0,
    seed: int = 0,
    controls: bool = True,
) -> dict[str, float]:
    """Flat `probe/linear/...` metrics for every feature set ("mid/t250" → {"mean", "grid"}).

    Keys: probe/linear/{count_acc,grid_auroc}/<layer>/t<step>; with controls, the same under
    probe/linear/shuffled/... (labels permuted, seeded) and probe/linear/text/... (caption text
    embedding only), plus probe/linear/count_majority (the majority-class accuracy).
    """
    counts = np.asarray(counts)
    occupancy = np.asarray(occupancy, dtype=float)
    if len(counts) < 4:
        return {}
    metrics: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(len(counts))
    for key, feats in features.items():
        for name, value in probe_scores(
            feats["mean"], feats["grid"], counts, occupancy, folds=folds, alpha=alpha, seed=seed
        ).items():
            metrics[f"probe/linear/{name}/{key}"] = value
        if controls:
            shuffled = probe_scores(
                feats["mean"],
                feats["grid"],
                counts[permutation],
                occupancy[permutation],
                folds=folds,
                alpha=alpha,
                seed=seed,
            )
            for name, value in shuffled.items():
                metrics[f"probe/linear/shuffled/{name}/{key}"] = value
    if controls and text_features is not None:
        text = probe_scores(
            text_features, text_features, counts, occupancy, folds=folds, alpha=alpha, seed=seed
        )
        for name, value in text.items():
            metrics[f"probe/linear/text/{name}"] = value
    _, frequencies = np.unique(counts, return_counts=True)
    metrics["probe/linear/count_majority"] = float(frequencies.max() / len(counts))
    return metrics
