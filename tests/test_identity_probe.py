"""Character-identity probe: exact on clean synthetic renders, robust to mild noise, metrics on
hand-built cases, swapped identities read as bleeding, and the probe pass emits the keys."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import look_image, mixed_look_image
from ymn.data.synthetic import (
    CHARACTERS,
    UNKNOWN_HAIR,
    render_layout,
    render_scene,
    sample_scene_spec,
)
from ymn.paths import CONFIG_DIR
from ymn.probes.detectors import SyntheticFaceDetector
from ymn.probes.identity import (
    identify_character,
    identity_flat_metrics,
    identity_metrics,
    look_shares,
    match_faces,
    measures_identity,
    zone_characters,
)
from ymn.probes.prompts import AUTO_CHARACTERS, build_probe_prompts, layout_centres
from ymn.probes.runner import ProbeConfig, run_probe_pass
from ymn.probes.scores import headline_readings

NAMES = list(CHARACTERS)
DETECTOR = SyntheticFaceDetector()


def boxes_for(layout: str, n: int, face: float = 0.12) -> list[list[float]]:
    """Face boxes of a probe layout (the same centres the probe prompts ask for)."""
    return [
        [x - face / 2, y - face / 2, x + face / 2, y + face / 2]
        for x, y in layout_centres(layout, n)
    ]


def identities(image: Image.Image) -> list[str | None]:
    return [identify_character(image, box) for box in DETECTOR.detect(image)]


def noisy(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    arr = np.asarray(image, dtype=float)
    arr = arr + np.random.default_rng(seed).normal(0.0, sigma, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- identification


@pytest.mark.parametrize("size, face", [(128, 0.12), (128, 0.3), (256, 0.12)])
def test_every_roster_character_is_identified_alone(size: int, face: float) -> None:
    for name in NAMES:
        for x, y in ((0.3, 0.3), (0.6, 0.55)):
            box = [x - face / 2, y - face / 2, x + face / 2, y + face / 2]
            image = render_layout([name], [box], size)
            assert identities(image) == [name], (name, size, face, (x, y))


@pytest.mark.parametrize("layout", ["row", "upper", "lower", "diagonal", "scatter"])
def test_scenes_with_one_to_five_characters(layout: str) -> None:
    for n in range(1, 6):
        for shift in range(0, len(NAMES), 3):
            cast = [NAMES[(shift + i) % len(NAMES)] for i in range(n)]
            image = render_layout(cast, boxes_for(layout, n), 128)
            assert identities(image) == cast, (layout, cast)  # both left to right


def _figure(person) -> tuple[float, float, float, float]:
    """Everything drawn for a person: twintails to the sides, bun above, legs below."""
    d = person.d
    return person.cx - 1.0 * d, person.cy - 0.95 * d, person.cx + 1.0 * d, person.cy + 3.05 * d


def _apart(people) -> bool:
    figures = [_figure(p) for p in people]
    return not any(
        a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
        for i, a in enumerate(figures)
        for b in figures[:i]
    )


@pytest.mark.parametrize("kind", ["screenshot", "regularization"])
def test_render_scene_people_are_identified(kind: str) -> None:
    """Random dataset scenes whose figures do not overlap: roster names exact, unnamed → None."""
    checked = 0
    for seed in range(80):
        spec = sample_scene_spec(np.random.default_rng(seed), kind, 128)
        if not _apart(spec.people):
            continue  # one figure drawn over another can hide a character entirely
        image, meta = render_scene(spec, 128)
        expected = [None if name == "unknown" else name for name in meta["characters"]]
        assert [identify_character(image, box) for box in meta["facepos"]] == expected, seed
        checked += 1
    assert checked >= 20


def test_mild_noise_keeps_identities() -> None:
    for n in (1, 3, 5):
        for shift in (0, 4):
            cast = [NAMES[(shift + i) % len(NAMES)] for i in range(n)]
            image = noisy(render_layout(cast, boxes_for("scatter", n), 128), sigma=8, seed=n)
            assert identities(image) == cast


def test_nothing_recognisable_is_none() -> None:
    blank = Image.new("RGB", (128, 128), (140, 200, 245))
    assert identify_character(blank, (0.4, 0.4, 0.52, 0.52)) is None
    static = noisy(Image.new("RGB", (128, 128), (128, 128, 128)), sigma=60)
    assert identify_character(static, (0.4, 0.4, 0.52, 0.52)) is None


def test_a_rendered_face_shows_its_own_colours_and_no_unnamed_hair() -> None:
    box = [0.35, 0.35, 0.65, 0.65]
    for name in NAMES:
        hair, outfit = look_shares(render_layout([name], [box], 128), box)
        assert max(hair, key=lambda who: hair[who]) == name, name
        assert max(outfit, key=lambda who: outfit[who]) == name, name
        assert hair[None] == 0.0, name


def test_each_zone_names_the_character_whose_colour_it_shows() -> None:
    box = [0.35, 0.3, 0.65, 0.6]
    for name in NAMES:
        assert zone_characters(look_shares(render_layout([name], [box], 128), box)) == (name, name)
    mixed = mixed_look_image("SaitoMio", "KonoRina", box)
    assert zone_characters(look_shares(mixed, box)) == ("SaitoMio", "KonoRina")
    blank = Image.new("RGB", (128, 128), (140, 200, 245))
    assert zone_characters(look_shares(blank, box)) == (None, None)


def test_an_unnamed_hair_colour_wins_its_zone_only_when_asked_to_compete() -> None:
    box = [0.35, 0.3, 0.65, 0.6]
    unnamed_brown = next(colour for colour, tag in UNKNOWN_HAIR if tag == "brown hair")
    natsume_in_unnamed_brown = look_image(replace(CHARACTERS["Natsume"], hair=unnamed_brown), box)
    shares = look_shares(natsume_in_unnamed_brown, box)
    assert zone_characters(shares) == (None, "Natsume")
    assert zone_characters(shares, unnamed_label="unnamed") == ("unnamed", "Natsume")
    natsume = render_layout(["Natsume"], [box], 128)
    assert zone_characters(look_shares(natsume, box), "unnamed") == ("Natsume", "Natsume")


def test_a_blank_image_shows_no_roster_colour() -> None:
    hair, outfit = look_shares(
        Image.new("RGB", (128, 128), (140, 200, 245)), (0.4, 0.4, 0.52, 0.52)
    )
    assert max(hair.values()) == 0.0 and max(outfit.values()) == 0.0


# ----------------------------------------------------------------------------- metrics


def test_hand_built_metrics() -> None:
    requested = [["SaitoMio"], ["SaitoMio", "OnoHaru"], ["SaitoMio", "OnoHaru", "TeraNao"]]
    boxes = [[(0, 0, 0.1, 0.1)], [(0, 0, 0.1, 0.1)] * 2, [(0, 0, 0.1, 0.1)] * 3]
    shown = [["SaitoMio"], ["OnoHaru", "OnoHaru"], ["Tamaki", None, "TeraNao"]]
    result = identity_metrics(requested, boxes, identified_per_image=shown)
    # 6 matched faces: correct A, S (2nd image), K; bleed S-for-A; unknown 1; other roster 1
    assert result["n_matched"] == 6
    assert result["char_acc"] == pytest.approx(3 / 6)
    assert result["bleed_rate"] == pytest.approx(1 / 6)
    assert result["unknown_rate"] == pytest.approx(1 / 6)
    assert result["by_count"] == {1: 1.0, 2: 0.5, 3: pytest.approx(1 / 3)}
    assert result["bleed_by_count"] == {1: 0.0, 2: 0.5, 3: 0.0}
    assert result["order_chance"] == pytest.approx((1 + 0.5 * 2 + 3 / 3) / 6)


def test_missing_faces_and_unroster_names_are_not_scored() -> None:
    requested = [["SaitoMio", "unknown", "Hinata"], ["OnoHaru", "TeraNao"]]
    boxes = [[(0, 0, 0.1, 0.1)] * 3, [(0, 0, 0.1, 0.1)]]  # the 2nd image lost a face
    shown = [["SaitoMio", None, "OnoHaru"], ["TeraNao"]]
    result = identity_metrics(requested, boxes, identified_per_image=shown)
    assert result["n_matched"] == 2  # SaitoMio, and OnoHaru paired with the first detection
    assert result["char_acc"] == 0.5
    assert result["bleed_rate"] == 0.5
    with pytest.raises(ValueError, match="probe image 0: 2 requested names but 1 target"):
        identity_metrics(
            [["SaitoMio", "OnoHaru"]],
            [[]],
            target_cells_per_image=[[[0, 0]]],
            identified_per_image=[[]],
        )
    assert result["drawn_by_count"] == {2: 0.0, 3: 1.0}  # per requested roster face
    empty = identity_metrics([["Hinata"]], [[]], identified_per_image=[[]])
    assert math.isnan(empty["char_acc"]) and empty["by_count"] == {}
    assert empty["drawn_by_count"] == {}


def test_drawn_counts_a_face_never_drawn_as_a_miss() -> None:
    """char_acc scores matched faces only; drawn (the headline lead reading) every asked face."""
    box = (0.44, 0.44, 0.56, 0.56)
    result = identity_metrics(
        [["SaitoMio"]] * 3,
        [[box], [box], []],
        identified_per_image=[["SaitoMio"], ["OnoHaru"], []],
    )
    assert result["by_count"] == {1: 0.5}
    assert result["drawn_by_count"] == {1: pytest.approx(1 / 3)}


def test_matching_by_cells_not_order() -> None:
    """Detections in other cells than asked are paired by position, not list position."""
    cells = [[0, 2], [4, 2]]
    found = [(0.82, 0.42, 0.94, 0.54), (0.02, 0.42, 0.14, 0.54)]  # right face listed first
    assert sorted(match_faces(cells, found)) == [(0, 1), (1, 0)]
    result = identity_metrics(
        [["SaitoMio", "OnoHaru"]],
        [found],
        target_cells_per_image=[cells],
        identified_per_image=[["OnoHaru", "SaitoMio"]],
    )
    assert result["char_acc"] == 1.0 and result["bleed_rate"] == 0.0
    # two faces asked of one cell (`many` in a row): the left-to-right order decides
    same = [(0.40, 0.4, 0.48, 0.5), (0.52, 0.4, 0.60, 0.5)]
    assert match_faces([[2, 2], [2, 2]], same) == [(0, 0), (1, 1)]


def test_swapped_identities_read_as_bleeding() -> None:
    record = build_probe_prompts(
        counts=(3,), layouts=("row",), seeds=(0,), characters=["SaitoMio", "KonoRina", "OnoHaru"]
    )[0]
    boxes = boxes_for("row", 3)
    faithful = render_layout(record["characters"], boxes, 128)
    swapped = render_layout(["KonoRina", "SaitoMio", "OnoHaru"], boxes, 128)
    images = [faithful, swapped]
    result = identity_metrics(
        [record["characters"]] * 2,
        [DETECTOR.detect(image) for image in images],
        images,
        target_cells_per_image=[record["cells"]] * 2,
    )
    assert result["char_acc"] == pytest.approx(4 / 6) and result["char_acc"] < 1
    assert result["bleed_rate"] == pytest.approx(2 / 6) and result["bleed_rate"] > 0
    assert result["unknown_rate"] == 0.0


def test_flat_metrics_only_from_records_with_identities() -> None:
    assert identity_flat_metrics([{"detected_boxes": [], "characters": ["SaitoMio"]}]) == {}
    records = [
        {
            "characters": ["SaitoMio"],
            "cells": [[2, 2]],
            "detected_boxes": [[0.44, 0.44, 0.56, 0.56]],
            "identities": ["SaitoMio"],
        },
    ]
    flat = identity_flat_metrics(records)
    assert flat["probe/identity/char_acc"] == 1.0
    assert flat["probe/identity/char_acc/n1"] == 1.0
    assert flat["probe/identity/bleed_rate/n1"] == 0.0


# ----------------------------------------------------------------------------- prompts + config


def test_auto_characters_name_every_face_in_cell_order() -> None:
    records = build_probe_prompts(
        counts=(2, "many"), layouts=("scatter",), seeds=(0,), characters="auto"
    )
    for record in records:
        assert len(record["characters"]) == len(record["cells"]) == record["count"]
        assert record["characters"][:5] == list(AUTO_CHARACTERS)[: record["count"]]
        assert all(name in record["prompt"] for name in record["characters"])
    assert set(AUTO_CHARACTERS) <= set(CHARACTERS)
    assert build_probe_prompts(counts=(1,), seeds=(0,))[0]["characters"] == []
    with pytest.raises(ValueError, match="probes.characters"):
        build_probe_prompts(counts=(1,), characters="everyone")


def test_default_probe_config_measures_identity() -> None:
    conf = yaml.safe_load((CONFIG_DIR / "probes/default.yaml").read_text())
    assert conf["characters"] == "auto" and conf["detector"] == "synthetic"
    record = build_probe_prompts(counts=(2,), seeds=(0,), characters=conf["characters"])[0]
    assert measures_identity(DETECTOR, record)
    assert not measures_identity(SimpleNamespace(detect=None), record)
    assert not measures_identity(DETECTOR, {**record, "characters": []})


def test_collector_rows_name_the_identity_metrics() -> None:
    from experiments.ablations import collect

    run = collect.RunResult(
        "all", 1, "x", {"probe/identity/char_acc": 0.5, "probe/identity/char_acc/n3": 0.25}
    )
    rows = dict((key, label) for label, key in collect.metric_rows([run]))
    assert rows["probe/identity/char_acc/n3"] == "character accuracy, asked 3"
    assert "probe/identity/char_acc" in rows


# ----------------------------------------------------------------------------- the probe pass


class RenderingModule(torch.nn.Module):
    """Stands in for DiffusionModule: 'samples' a prepared synthetic render per prompt."""

    def __init__(self, images: dict[str, Image.Image]) -> None:
        super().__init__()
        self.images = images
        self.vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=[1, 1, 1, 1]))
        self.unet = SimpleNamespace(config=SimpleNamespace(sample_size=16, in_channels=4))

    def log_images(self, prompts, seeds, **kwargs):
        return [self.images[p] for p in prompts]


def test_probe_pass_logs_and_writes_identity_metrics(tmp_path) -> None:
    prompts = build_probe_prompts(counts=(1, 3), layouts=("row",), seeds=(0,), characters="auto")
    images = {}
    for record in prompts:
        cast = list(record["characters"])
        if record["count"] == 3:
            cast[0], cast[1] = cast[1], cast[0]  # the model swaps the first two characters
        images[record["prompt"]] = render_layout(cast, boxes_for("row", record["count"]), 128)
    cfg = ProbeConfig(
        size=(128, 128),
        attention_on_samples=False,
        teacher_forced=False,
        linear=False,
        n_permutations=10,
    )
    metrics = run_probe_pass(
        RenderingModule(images),
        step=7,
        out_dir=tmp_path,
        detector=DETECTOR,
        prompts=prompts,
        heldout_batches=None,
        cfg=cfg,
    )
    assert metrics["probe/identity/char_acc"] == pytest.approx(2 / 4)
    assert metrics["probe/identity/bleed_rate"] == pytest.approx(2 / 4)
    assert metrics["probe/identity/char_acc/n1"] == 1.0
    assert metrics["probe/identity/char_acc/n3"] == pytest.approx(1 / 3)
    assert metrics["probe/identity/drawn/n1"] == 1.0
    assert metrics["probe/identity/drawn/n3"] == pytest.approx(1 / 3)
    assert metrics["probe/count/exact_acc"] == 1.0
    report = json.loads((tmp_path / "probes" / "step_000007.json").read_text())
    assert report["metrics"]["probe/identity/bleed_rate/n3"] == pytest.approx(2 / 3)
    lead = headline_readings(report["records"])["lead drawn (1person, <name>)"]
    assert lead["value"] == metrics["probe/identity/drawn/n1"]
    three = next(r for r in report["records"] if r["count"] == 3)
    assert three["characters"] == list(AUTO_CHARACTERS[:3])
    assert three["identities"] == [AUTO_CHARACTERS[1], AUTO_CHARACTERS[0], AUTO_CHARACTERS[2]]


def test_palette_neighbours_name_the_colour_a_roster_colour_is_read_as_when_it_errs() -> None:
    from ymn.probes.identity import palette_neighbours

    neighbours = palette_neighbours()
    assert len(neighbours) == 2 * len(CHARACTERS)
    tamaki = neighbours["Tamaki hair"]  # blonde (240, 200, 60) beside a yellow outfit
    assert tamaki["nearest"] == "OnoHaru outfit" and tamaki["rgb"] == [245, 210, 60]
    assert tamaki["distance"] == pytest.approx(11.2, abs=0.05)
    assert neighbours["OnoHaru outfit"]["nearest"] == "Tamaki hair"
    box = [0.35, 0.3, 0.65, 0.6]
    shifted = replace(CHARACTERS["Tamaki"], hair=(244, 208, 60))  # past half the distance
    hair_zone, _ = zone_characters(look_shares(look_image(shifted, box), box))
    assert hair_zone != "Tamaki"
