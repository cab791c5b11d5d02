"""Held-out loss: one common scene set, per-image losses independent of batching, a paired test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.study.heldout_loss import heldout_scenes, paired_mean_difference, per_image_loss


def test_heldout_scenes_are_the_same_set_every_time_and_of_the_asked_kind() -> None:
    first, again = heldout_scenes("hands", 3, 64), heldout_scenes("hands", 3, 64)
    assert torch.equal(first.pixels, again.pixels) and first.metas == again.metas
    assert (
        first.pixels.shape == (3, 3, 64, 64) and -1 <= first.pixels.min() < first.pixels.max() <= 1
    )
    assert all("hands" in meta["tags"] for meta in first.metas)


def test_per_image_loss_does_not_depend_on_the_batch_and_reads_the_caption(tiny_components) -> None:
    heldout = heldout_scenes("hands", 4, 64)
    captions = ["hands, close-up"] * 4
    whole = per_image_loss(tiny_components, heldout, captions, timesteps=2, batch_size=4)
    split = per_image_loss(tiny_components, heldout, captions, timesteps=2, batch_size=3)
    np.testing.assert_allclose(whole, split, rtol=1e-5)
    other = per_image_loss(tiny_components, heldout, ["a red car"] * 4, timesteps=2)
    assert whole.shape == (4,) and not np.allclose(whole, other)


def test_paired_mean_difference_finds_a_clear_shift_and_not_a_null_one() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.1, 0.02, 200)
    shifted = paired_mean_difference(base - 0.01 + rng.normal(0, 0.002, 200), base)
    assert shifted["diff"] == pytest.approx(-0.01, abs=1e-3)
    assert shifted["ci95"][1] < 0 and shifted["p"] < 0.01 and shifted["n_images"] == 200
    null = paired_mean_difference(base + rng.normal(0, 0.002, 200), base)
    assert null["ci95"][0] < 0 < null["ci95"][1] and null["p"] > 0.05
