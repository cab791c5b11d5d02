"""Batched probe sampling: a record's image and attention do not depend on its batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ymn.model.components import build_tiny
from ymn.model.module import DiffusionModule
from ymn.probes.config import ProbeConfig
from ymn.probes.prompts import build_probe_prompts
from ymn.probes.runner import probe_batches, sample_probe

SIZE = 64
PIXEL_TOLERANCE = 2  # uint8 levels: batched convolutions round differently in float32


class RecordingDetector:
    """Finds no face; keeps every image it is shown, in order."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []

    def detect(self, image):
        self.images.append(np.asarray(image, dtype=np.int16))
        return []


@pytest.fixture(scope="module")
def module() -> DiffusionModule:
    return DiffusionModule(build_tiny(0), optimizer=torch.optim.AdamW).eval()


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return build_probe_prompts(counts=(1, 2, 3), layouts=("row",), seeds=(0, 1))


def sample(module, prompts, **settings) -> tuple[list[np.ndarray], list[dict]]:
    cfg = ProbeConfig(size=(SIZE, SIZE), steps=2, **settings)
    detector = RecordingDetector()
    records = sample_probe(module, prompts, detector, cfg, image_dir=None)
    return detector.images, records


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return max(int(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def test_probe_batches_cover_every_record_in_order(prompts) -> None:
    batches = list(probe_batches(prompts, 4))
    assert [len(b) for b in batches] == [4, 2]
    assert [r for b in batches for r in b] == prompts


@pytest.mark.parametrize("noise_prior", [False, True])
def test_batched_images_and_attention_match_unbatched(module, prompts, noise_prior) -> None:
    single, single_records = sample(module, prompts, batch_size=1, noise_prior=noise_prior)
    batched, batched_records = sample(module, prompts, batch_size=4, noise_prior=noise_prior)
    assert max_diff(single, batched) <= PIXEL_TOLERANCE
    assert max_diff(single[:1], single[1:2]) > 10 * PIXEL_TOLERANCE  # seeds 0 and 1 differ
    for one, many in zip(single_records, batched_records, strict=True):
        assert one["prompt"] == many["prompt"] and one["seed"] == many["seed"]
        a, b = one["attention"], many["attention"]
        assert a["count_entropy"] == pytest.approx(b["count_entropy"], abs=1e-4)
        assert [f["cell"] for f in a["faces"]] == [f["cell"] for f in b["faces"]]
        masses = [(f["mass"], g["mass"]) for f, g in zip(a["faces"], b["faces"], strict=True)]
        assert masses and all(x == pytest.approx(y, abs=1e-4) for x, y in masses)


def test_record_image_does_not_depend_on_batch_mates(module, prompts) -> None:
    alone, _ = sample(module, prompts[:1], batch_size=1)
    first, _ = sample(module, prompts[:3], batch_size=3)
    last, _ = sample(module, [prompts[5], prompts[3], prompts[0]], batch_size=3)
    assert max_diff(alone, first[:1]) <= PIXEL_TOLERANCE
    assert max_diff(alone, last[2:]) <= PIXEL_TOLERANCE


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="probes.batch_size"):
        ProbeConfig(batch_size=0)
