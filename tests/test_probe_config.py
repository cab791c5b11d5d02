"""One home per probe setting: the `probes` group builds the ProbeCallback's ProbeConfig; sample
grids are set on their own callback node; the presets compose."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from ymn.callbacks.probes import ProbeCallback
from ymn.callbacks.samples import SampleImages
from ymn.paths import CONFIG_DIR
from ymn.probes.config import ProbeConfig
from ymn.reliability.config_schema import iter_problems


def composed(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["paths.run_dir=/tmp/ymn-compose", *overrides])


def callbacks(*overrides: str) -> tuple[ProbeCallback, SampleImages]:
    cfg = composed(*overrides)
    return instantiate(cfg.callbacks.probes), instantiate(cfg.callbacks.samples)


def test_probe_group_builds_the_callbacks_config() -> None:
    probes, samples = callbacks(
        "probes.steps=3", "probes.every_n_steps=7", "caption=grid3", "callbacks.samples.steps=4"
    )
    assert isinstance(probes.cfg, ProbeConfig)
    assert probes.cfg.steps == 3 and probes.every_n_steps == 7
    assert probes.cfg.caption.grid == "asp3"  # the run's caption config reaches the probes
    assert isinstance(probes.cfg.feature_layers, dict) and probes.cfg.batch_size == 8
    assert samples.steps == 4 and probes.cfg.steps == 3  # separate homes, no shared keys


@pytest.mark.parametrize(
    "override", ["callbacks.probes.steps=3", "probes.samples.steps=3", "callbacks.probes.seeds=[0]"]
)
def test_old_and_second_paths_are_rejected(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        composed(override)


def test_unknown_probe_key_is_named_by_the_validator() -> None:
    problems = dict(iter_problems(composed("+probes.not_a_setting=1")))
    assert "unknown key 'not_a_setting'" in problems["probes.not_a_setting"]


def test_study_preset_has_128_images_per_count_batched() -> None:
    probes, _ = callbacks("probes=study")
    per_count = Counter(record["count"] for record in probes.prompts)
    assert sorted(per_count) == [1, 2, 3, 4, 5]
    assert min(per_count.values()) >= 128
    assert probes.cfg.batch_size >= 16
    assert probes.at_start and probes.at_end and probes.every_n_steps == 0


def test_off_and_fast_presets() -> None:
    off, samples = callbacks("probes=off")
    assert (off.every_n_steps, off.at_start, off.at_end) == (0, False, False)
    assert samples.every_n_steps == 1000  # the sample grid is its own callback
    fast, _ = callbacks("probes=fast")
    assert len(fast.prompts) == 4 and fast.cfg.steps == 2


def test_every_probe_setting_is_in_the_group_file() -> None:
    """A field missing from conf/probes/default.yaml could not be overridden as probes.<key>."""
    keys = {str(k) for k in composed().probes if not str(k).startswith("_")}
    assert keys == {f.name for f in dataclasses.fields(ProbeConfig)}


def test_seeds_as_a_count() -> None:
    assert ProbeConfig(seeds=3).seeds == [0, 1, 2]
