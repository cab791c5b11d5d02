"""experiments.toy_finetune.names: telling name binding from drawing one look for every name."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.toy_finetune.names import (
    LEAD,
    asked_look,
    base_label,
    binding_readings,
    centre_distance,
)
from ymn.data.synthetic import CHARACTERS

NAMES = list(CHARACTERS)


def test_a_model_that_binds_every_name_reads_far_above_the_name_ignored_expectation():
    asked = NAMES * 4
    reading = binding_readings(asked, list(asked))
    assert reading["named_drawn"]["value"] == 1.0
    assert reading["if_name_ignored"] == pytest.approx(1 / len(NAMES))
    assert reading["p_permutation_names_shuffled"] < 0.01
    assert reading["lead_drawn_when_another_is_asked"]["value"] == 0.0


def test_a_model_that_draws_the_lead_for_every_name_reads_at_the_expectation():
    asked = NAMES * 4
    reading = binding_readings(asked, [LEAD] * len(asked))
    assert reading["lead_drawn_when_asked"]["value"] == 1.0  # what the probes' lead reading sees
    assert reading["lead_drawn_when_another_is_asked"]["value"] == 1.0
    assert reading["named_drawn"]["value"] == pytest.approx(reading["if_name_ignored"])
    assert reading["p_permutation_names_shuffled"] > 0.5
    assert reading["per_name"][NAMES[1]]["value"] == 0.0


def test_the_face_nearest_the_centre_is_the_asked_one():
    centred, corner = (0.4, 0.4, 0.6, 0.6), (0.0, 0.0, 0.2, 0.2)
    assert min([corner, centred], key=centre_distance) == centred


def test_the_base_label_names_a_run_from_another_base_without_its_local_path():
    embedded = OmegaConf.create({"model": {"components": {"pretrained": None}}})
    local = OmegaConf.create({"model": {"components": {"pretrained": "/tmp/x/tiny-base"}}})
    assert base_label(embedded, None) == "the embedded base"
    assert "/tmp" not in base_label(local, None)
    assert base_label(local, None) != "the embedded base"
    assert base_label(embedded, Path("/somewhere/OLD_BASE")) == "OLD_BASE"


def test_the_asked_look_averages_each_names_own_colours_over_its_faces():
    lead_look = ({LEAD: 0.6, None: 0.1}, {LEAD: 0.5})
    drifted = ({LEAD: 0.0, None: 0.5}, {LEAD: 0.3})
    other = NAMES[1]
    looks = asked_look([LEAD, LEAD, LEAD, other], [lead_look, drifted, None, ({other: 1.0}, {})])
    assert looks[LEAD]["n_faces"] == 2  # the image without a face does not count
    assert looks[LEAD]["own_hair"] == pytest.approx(0.3)
    assert looks[LEAD]["own_outfit"] == pytest.approx(0.4)
    assert looks[LEAD]["unnamed_hair"] == pytest.approx(0.3)
    assert looks[other]["own_hair"] == 1.0 and looks[other]["own_outfit"] == 0.0
    assert looks[NAMES[2]]["n_faces"] == 0 and looks[NAMES[2]]["own_hair"] is None
