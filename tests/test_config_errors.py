"""Config errors fail before any work starts, naming the key and where it was set; missing
model or shard paths fail at setup with what to do."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from tests.conftest import run_training
from ymn.reliability.config_schema import CONFIG_DIR, ConfigError, iter_problems, validate_config

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
BAD_EXPERIMENT = """# @package _global_
data:
  batch_sizee: 2
model:
  optimizer:
    lr: fast
trainer:
  max_steps: 1.5
"""


def composed(*overrides: str, search: Path | None = None):
    extra = [f"hydra.searchpath=[file://{search}]"] if search else []
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, *extra])


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_shipped_configs_validate(experiment):
    cfg = composed(*([f"experiment={experiment}"] if experiment else []))
    assert list(iter_problems(cfg)) == []


def test_unknown_key_and_wrong_types_name_key_and_file(tmp_path):
    (tmp_path / "experiment").mkdir()
    bad = tmp_path / "experiment" / "bad.yaml"
    bad.write_text(BAD_EXPERIMENT)
    cfg = composed("experiment=bad", search=tmp_path)
    with pytest.raises(ConfigError) as caught:
        validate_config(
            cfg, choices={"experiment": "bad"}, overrides=[], config_dirs=[tmp_path, CONFIG_DIR]
        )
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 3, caught.value
    by_key = {line.split(":")[0].strip(): line for line in lines}
    assert "unknown key 'batch_sizee'" in by_key["data.batch_sizee"]
    assert "'fast' is str" in by_key["model.optimizer.lr"]
    assert (
        "1.5 is float" in by_key["trainer.max_steps"]
        and "expects int" in by_key["trainer.max_steps"]
    )
    assert all(str(bad) in line for line in lines)


def test_command_line_type_error_names_the_override():
    cfg = composed("data.batch_size=eight")
    with pytest.raises(ConfigError, match=r"data.batch_size: .*command-line override"):
        validate_config(cfg, choices={"data": "synthetic"}, overrides=["data.batch_size=eight"])


def test_unknown_key_on_command_line_is_rejected_by_struct_mode():
    with pytest.raises(ConfigCompositionException, match="batch_sizee"):
        composed("data.batch_sizee=2")


def test_group_file_is_named_for_a_key_it_sets(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "typo.yaml").write_text(
        (CONFIG_DIR / "data" / "synthetic.yaml").read_text() + "\nshufle_buffer: 10\n"
    )
    cfg = composed("data=typo", search=tmp_path)
    with pytest.raises(ConfigError, match=r"data.shufle_buffer: unknown key .*typo.yaml"):
        validate_config(cfg, choices={"data": "typo"}, overrides=[], config_dirs=[tmp_path])


def test_ymn_train_fails_before_any_work(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "bad.yaml").write_text(BAD_EXPERIMENT)
    data_dir = tmp_path / "data"
    done = run_training(
        [
            sys.executable,
            "-m",
            "ymn.train",
            "experiment=bad",
            f"hydra.searchpath=[file://{tmp_path}]",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"paths.data_dir={data_dir}",
            "logger=csv",
        ],
        ok=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode != 0
    assert "batch_sizee" in done.stderr and str(tmp_path / "experiment" / "bad.yaml") in done.stderr
    assert not data_dir.exists()  # no synthetic data was generated: nothing started
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_model_path_says_what_to_do(tmp_path):
    from ymn.model.components import load_components

    with pytest.raises(FileNotFoundError, match=r"model.components.pretrained=.*diffusers folder"):
        load_components("tiny", pretrained=str(tmp_path / "nope"))


def test_missing_shards_say_what_to_do(tmp_path):
    from ymn.data.datamodule import YmnDataModule
    from ymn.data.decode import ShardSetupError

    dm = YmnDataModule(shards=str(tmp_path / "shards"), resolution=64, batch_size=2)
    with pytest.raises(ShardSetupError, match="ymn-pack"):
        dm.setup("fit")
