"""Every config composes, and the composed objects are the ones the code expects."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from ymn.paths import CONFIG_DIR

CONF = CONFIG_DIR
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_config(overrides: list[str]):
    """Compose as `ymn-train` does, with the Hydra runtime set so `${hydra:...}` resolves."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment):
    cfg = compose_config([f"experiment={experiment}", "paths.run_dir=/tmp/ymn-compose"])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["name"]
    assert cfg.model._target_ == "ymn.model.module.DiffusionModule"
    assert cfg.trainer._target_ == "lightning.Trainer"


def test_default_config_is_the_embedded_tiny_model():
    cfg = compose_config(["paths.run_dir=/tmp/ymn-compose"])
    assert cfg.model.components.name == "tiny" and cfg.model.components.pretrained is None
    assert cfg.model.train_text_encoder is True
    assert cfg.model.optimizer.weight_decay == 0.01


def test_init_from_sets_the_weights_the_components_load(tmp_path):
    from ymn.train import apply_init_from

    cfg = compose_config(["paths.run_dir=/tmp/ymn-compose", f"init_from={tmp_path}"])
    apply_init_from(cfg)
    assert cfg.model.components.pretrained == str(tmp_path.resolve())
    assert "pretrained" not in cfg.model  # one home: the node that loads the weights


def test_unknown_override_key_fails_naming_it():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_config(["model.no_such_key=1"])
