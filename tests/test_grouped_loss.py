"""val/loss split per top-level category and per number of people."""

from __future__ import annotations

import pytest
import torch

from ymn.model.grouped_loss import GroupedLoss, sample_groups


def test_groups_are_the_first_folder_and_the_people_count():
    meta = {"category": "screenshots/2_characters/A+B/face_height_ratio_0-25", "n_people": 2}
    assert sample_groups(meta) == ["screenshots", "n2"]
    assert sample_groups({"category": "hands", "n_people": "many"}) == ["hands"]
    assert sample_groups({}) == []


def test_means_are_per_sample_over_batches():
    grouped = GroupedLoss()
    grouped.add(
        [{"category": "fanart/x", "n_people": 1}, {"category": "hands", "n_people": 0}],
        torch.tensor([1.0, 3.0]),
    )
    grouped.add([{"category": "fanart/y", "n_people": 1}], torch.tensor([2.0]))
    grouped.add(None, torch.tensor([100.0]))  # no metadata: counted nowhere
    assert grouped.means() == pytest.approx({"fanart": 1.5, "hands": 3.0, "n0": 3.0, "n1": 1.5})
    grouped.reset()
    assert grouped.means() == {}
