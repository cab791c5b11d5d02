"""Face detectors: the synthetic detector recovers ground truth; loaders and animeface wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.optimize import linear_sum_assignment

from ymn.data.synthetic import generate_dataset, render_scene, sample_scene_spec
from ymn.data.synthetic_draw import SKIN
from ymn.probes.detectors import (
    AnimeFaceDetector,
    FaceDetector,
    SyntheticFaceDetector,
    load_detector,
)

SIZE = 128


def _cell(box: np.ndarray) -> tuple[int, int]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(int(cx * 5), 4), min(int(cy * 5), 4)


def _matched_cells(truth: list, found: list) -> list[tuple[tuple, tuple]]:
    """Hungarian matching on centre distance; pairs of (true cell, found cell)."""
    gt, pr = np.array(truth), np.array(found)
    centres = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    cost = np.abs(centres(gt)[:, None] - centres(pr)[None]).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return [(_cell(gt[r]), _cell(pr[c])) for r, c in zip(rows, cols, strict=True)]


def _noisy(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    arr = np.asarray(image, dtype=float)
    arr = arr + np.random.default_rng(seed).normal(0, sigma, arr.shape)
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def samples(module_tmp) -> list[tuple[Image.Image, dict]]:
    root = module_tmp.mktemp("synth")
    generate_dataset(root, n=50, seed=21, size=SIZE)
    pairs = []
    for path in sorted(root.rglob("ymnsynth_*.png")):
        with Image.open(path) as image:
            pairs.append((image.convert("RGB"), json.loads(path.with_suffix(".json").read_text())))
    return pairs


def test_synthetic_detector_recovers_counts_and_cells(samples: list) -> None:
    detector = SyntheticFaceDetector()
    n_faces = 0
    for image, meta in samples:
        found = detector.detect(image)
        assert len(found) == meta["n_faces"], meta
        if found:
            pairs = _matched_cells(meta["facepos"], found)
            assert all(t == f for t, f in pairs), pairs
            # clean images: boxes are exactly the ground truth, in the same face order
            np.testing.assert_allclose(np.array(found), np.array(meta["facepos"]))
        n_faces += len(found)
    assert n_faces > len(samples)  # multi-person scenes were in the mix


def test_synthetic_detector_counts_mildly_noisy_images(samples: list) -> None:
    detector = SyntheticFaceDetector()
    for i, (image, meta) in enumerate(samples):
        found = detector.detect(_noisy(image, 8.0, seed=i))
        assert len(found) == meta["n_faces"], meta
        if found:
            assert all(t == f for t, f in _matched_cells(meta["facepos"], found))


def test_hand_close_ups_have_no_faces() -> None:
    rng = np.random.default_rng(2)
    detector = SyntheticFaceDetector()
    for _ in range(10):
        image, meta = render_scene(sample_scene_spec(rng, "hands", SIZE), SIZE)
        assert meta["n_faces"] == 0
        assert detector.detect(image) == []
        assert detector.detect(_noisy(image, 8.0, seed=0)) == []


def test_tiny_specks_and_streaks_are_not_faces() -> None:
    image = Image.new("RGB", (SIZE, SIZE), (140, 200, 245))
    draw = ImageDraw.Draw(image)
    draw.rectangle([10, 10, 12, 12], fill=SKIN)  # 9 px speck
    draw.line([20, 100, 120, 60], fill=SKIN, width=4)  # long thin diagonal streak
    draw.ellipse([60, 10, 79, 29], fill=SKIN)  # a real 20 px face
    assert SyntheticFaceDetector().detect(image) == [(60 / SIZE, 10 / SIZE, 80 / SIZE, 30 / SIZE)]
    assert len(SyntheticFaceDetector(min_area_frac=0.0, min_fill=0.0).detect(image)) == 3


def test_tolerance_controls_what_counts_as_skin() -> None:
    image = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    off_skin = tuple(c - 20 for c in SKIN)
    ImageDraw.Draw(image).ellipse([30, 30, 69, 69], fill=off_skin)
    assert len(SyntheticFaceDetector(tolerance=30).detect(image)) == 1
    assert SyntheticFaceDetector(tolerance=10).detect(image) == []


def test_load_detector_variants() -> None:
    synthetic = load_detector("synthetic", tolerance=40)
    assert isinstance(synthetic, SyntheticFaceDetector) and synthetic.tolerance == 40
    assert isinstance(load_detector("animeface"), AnimeFaceDetector)
    user = load_detector("ymn.probes.detectors:SyntheticFaceDetector")
    assert isinstance(user, FaceDetector)
    with pytest.raises(ValueError, match="unknown detector"):
        load_detector("haar")
    with pytest.raises(ValueError, match="could not be imported"):
        load_detector("no_such_module_xyz:Detector")
    with pytest.raises(TypeError, match="detect"):
        load_detector("collections:OrderedDict")


def test_anime_face_detector_returns_fraction_boxes(samples: list) -> None:
    detector = AnimeFaceDetector()
    for image, _ in samples[:5]:
        boxes = detector.detect(image)
        assert isinstance(boxes, list)
        for box in boxes:
            assert len(box) == 4
            left, top, right, bottom = box
            assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
