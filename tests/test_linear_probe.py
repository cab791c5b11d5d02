"""Linear probes: a planted linear signal is recovered; shuffled labels stay at chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ymn.probes.linear import (
    auroc,
    capture_features,
    cv_count_accuracy,
    kfold_indices,
    linear_probe_metrics,
    pool_features,
    ridge_fit_predict,
)


def planted(n: int = 120, dim: int = 300, noise: float = 0.5, seed: int = 0):
    """Features = [one-hot count, occupancy] @ W + noise."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=n)
    occupancy = (rng.random((n, 25)) < 0.25).astype(float)
    labels = np.concatenate([np.eye(5)[counts - 1], occupancy], axis=1)
    features = labels @ rng.normal(size=(labels.shape[1], dim)) + noise * rng.normal(size=(n, dim))
    return features, counts, occupancy


def test_planted_signal_is_recovered_and_shuffled_control_is_at_chance() -> None:
    features, counts, occupancy = planted()
    m = linear_probe_metrics(
        {"mid/t250": {"mean": features, "grid": features}},
        counts,
        occupancy,
        text_features=np.random.default_rng(1).normal(size=(len(counts), 16)),
        seed=0,
    )
    assert m["probe/linear/count_acc/mid/t250"] > 0.9
    assert m["probe/linear/grid_auroc/mid/t250"] > 0.9
    chance = m["probe/linear/count_majority"]
    assert m["probe/linear/shuffled/count_acc/mid/t250"] < chance + 0.15
    assert abs(m["probe/linear/shuffled/grid_auroc/mid/t250"] - 0.5) < 0.1
    assert abs(m["probe/linear/text/grid_auroc"] - 0.5) < 0.1  # noise text features


def test_probe_is_seeded() -> None:
    features, counts, _ = planted(noise=3.0)
    a = cv_count_accuracy(features, counts, seed=4)
    assert a == cv_count_accuracy(features, counts, seed=4)


def test_kfold_covers_every_index_once() -> None:
    folds = kfold_indices(23, 5, seed=0)
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests.tolist()) == list(range(23))
    for train, test in folds:
        assert not set(train) & set(test)


@pytest.mark.parametrize("dim", [5, 200])  # primal and dual forms
def test_ridge_fits_a_linear_map(dim: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, dim))
    y = x @ rng.normal(size=(dim, 2))
    pred = ridge_fit_predict(x, y, x, alpha=1e-6)
    assert np.corrcoef(pred[:, 0], y[:, 0])[0, 1] > 0.99


def test_auroc_known_values() -> None:
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_capture_features_shapes_and_hooks_removed() -> None:
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), torch.nn.Conv2d(6, 4, 1))
    with capture_features(block, {"first": "0", "second": "1"}) as store:
        block(torch.randn(2, 3, 10, 10))
    assert store["first"].shape == (2, 6, 10, 10) and store["second"].shape == (2, 4, 10, 10)
    assert not block[0]._forward_hooks and not block[1]._forward_hooks
    pooled = pool_features(store["second"], grid=5)
    assert pooled["mean"].shape == (2, 4) and pooled["grid"].shape == (2, 4 * 25)
    with pytest.raises(ValueError, match="no submodule"):
        with capture_features(block, {"x": "missing"}):
            pass
