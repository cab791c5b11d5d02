"""A v-prediction model's single file says so, for loaders that read no diffusers config."""

from __future__ import annotations

import dataclasses

import pytest
from safetensors import safe_open

from ymn.model.components import build_tiny, sd_scheduler
from ymn.model.export import save_diffusers
from ymn.model.prediction_markers import PREDICTION_METADATA_KEY, marked_v_prediction
from ymn.model.single_file import export_single_file, load_single_file


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(0)


def header(path) -> tuple[set[str], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys()), f.metadata()


def schedule_of(components) -> tuple[str, bool, str]:
    config = components.scheduler.config
    return config.prediction_type, config.rescale_betas_zero_snr, config.timestep_spacing


def test_a_v_prediction_zero_snr_file_carries_both_markers_and_loads_under_its_schedule(
    tiny, tmp_path
):
    v_model = dataclasses.replace(tiny, scheduler=sd_scheduler("v_prediction", True))
    path = export_single_file(v_model, tmp_path / "v.safetensors")
    keys, metadata = header(path)
    assert {"v_pred", "ztsnr"} <= keys
    assert metadata[PREDICTION_METADATA_KEY] == "v"
    assert schedule_of(load_single_file(path)) == ("v_prediction", True, "trailing")


def test_the_markers_override_a_config_folder_that_says_epsilon(tiny, tmp_path):
    """A file from elsewhere is read with a stock (epsilon) config; its markers decide."""
    epsilon_folder = save_diffusers(tiny, tmp_path / "epsilon")
    v_model = dataclasses.replace(tiny, scheduler=sd_scheduler("v_prediction", False))
    path = export_single_file(v_model, tmp_path / "v.safetensors")
    assert "ztsnr" not in header(path)[0]
    loaded = load_single_file(path, config=epsilon_folder)
    assert schedule_of(loaded)[:2] == ("v_prediction", False)


def test_an_epsilon_file_has_no_marker_tensor_and_stays_epsilon(tiny, tmp_path):
    path = export_single_file(tiny, tmp_path / "eps.safetensors")
    keys, metadata = header(path)
    assert not {"v_pred", "ztsnr"} & keys
    assert metadata[PREDICTION_METADATA_KEY] == "epsilon"
    assert schedule_of(load_single_file(path))[0] == "epsilon"


@pytest.mark.parametrize(
    ("keys", "metadata", "expected"),
    [
        ({"v_pred"}, {}, (True, False)),
        ({"v_pred", "ztsnr"}, {}, (True, True)),
        (set(), {PREDICTION_METADATA_KEY: "v"}, (True, False)),
        ({"ztsnr"}, {}, (False, False)),  # zero SNR without v-prediction is not a schedule
        (set(), {PREDICTION_METADATA_KEY: "epsilon"}, (False, False)),
    ],
)
def test_markers_are_read_from_keys_or_modelspec_metadata(keys, metadata, expected):
    assert marked_v_prediction(keys, metadata) == expected
