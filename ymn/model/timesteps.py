"""Training timestep distributions: uniform (SD's), or biased towards high or low noise or a range.

Layout and count are decided in the first, high-noise sampling steps, so weighting training
towards large timesteps is a candidate remedy for the card's count failure; the option follows
SimpleTuner's `--timestep_bias_strategy` and OneTrainer's `timestep_distribution`:

- `uniform`: every timestep equally likely (the recipe);
- `high` / `low`: the top / bottom `portion` of timesteps drawn `multiplier` times as often;
- `range`: timesteps in [begin, end) drawn `multiplier` times as often.

Config: `model.timesteps` (`conf/model/*.yaml`), logged with the run's hyperparameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("uniform", "high", "low", "range")


@dataclass(frozen=True)
class TimestepBias:
    """Which timesteps training draws more often (see the module docstring)."""

    strategy: str = "uniform"
    multiplier: float = 2.0
    portion: float = 0.25
    begin: int = 0
    end: int = 1000

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"model.timesteps.strategy={self.strategy!r}: expected one of {STRATEGIES}"
            )
        if self.multiplier <= 0:
            raise ValueError(f"model.timesteps.multiplier={self.multiplier}: must be > 0")
        if not 0.0 < self.portion <= 1.0:
            raise ValueError(f"model.timesteps.portion={self.portion}: must be in (0, 1]")
        if not 0 <= self.begin < self.end:
            raise ValueError(f"model.timesteps: begin={self.begin} must be in [0, end={self.end})")

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        """Unnormalised sampling weight of every timestep 0 .. num_train_timesteps - 1."""
        weights = torch.ones(num_train_timesteps, dtype=torch.float64)
        boosted = max(1, round(self.portion * num_train_timesteps))
        if self.strategy == "high":
            weights[-boosted:] *= self.multiplier
        elif self.strategy == "low":
            weights[:boosted] *= self.multiplier
        elif self.strategy == "range":
            weights[self.begin : min(self.end, num_train_timesteps)] *= self.multiplier
        return weights

    def sample(
        self,
        n: int,
        num_train_timesteps: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """n timesteps (int64) from this distribution; uniform is exactly `torch.randint`."""
        if self.strategy == "uniform":
            return torch.randint(0, num_train_timesteps, (n,), device=device, generator=generator)
        weights = self.weights(num_train_timesteps)
        drawn = torch.multinomial(weights, n, replacement=True, generator=generator)
        return drawn.to(device)
