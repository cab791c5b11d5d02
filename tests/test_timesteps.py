"""Training timestep distributions (ymn.model.timesteps.TimestepBias)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from ymn.model.timesteps import TimestepBias
from ymn.paths import CONFIG_DIR

N = 1000


def test_uniform_draws_exactly_what_randint_draws():
    a = TimestepBias().sample(64, N, generator=torch.Generator().manual_seed(3))
    b = torch.randint(0, N, (64,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("bias", "favoured"),
    [
        (TimestepBias("high", multiplier=3.0, portion=0.25), lambda t: t >= 750),
        (TimestepBias("low", multiplier=3.0, portion=0.25), lambda t: t < 250),
        (
            TimestepBias("range", multiplier=3.0, begin=400, end=650),
            lambda t: (t >= 400) & (t < 650),
        ),
    ],
)
def test_biased_strategies_draw_the_favoured_quarter_as_often_as_the_weights_say(bias, favoured):
    drawn = bias.sample(40_000, N, generator=torch.Generator().manual_seed(0))
    share = favoured(drawn).double().mean().item()
    assert share == pytest.approx(0.75 / (0.75 + 0.75), abs=0.01)  # 3 x 1/4 against 3/4
    assert drawn.min() >= 0 and drawn.max() < N and drawn.dtype == torch.int64


@pytest.mark.parametrize(
    "kwargs",
    [{"strategy": "later"}, {"multiplier": 0.0}, {"portion": 1.5}, {"begin": 500, "end": 100}],
)
def test_bad_settings_name_the_key(kwargs):
    with pytest.raises(ValueError, match="model.timesteps"):
        TimestepBias(**kwargs)


def test_config_reaches_the_module(tiny_components):
    from ymn.model.module import DiffusionModule

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model.timesteps.strategy=high"])
    assert cfg.model.timesteps.strategy == "high"
    module = DiffusionModule(tiny_components, torch.optim.AdamW, timesteps=cfg.model.timesteps)
    assert module.timestep_bias == TimestepBias("high", 2.0, 0.25, 0, 1000)
