"""colour_leak recovers the clean latent exactly when the UNet is exact, and its look reading
names the drawn character on ground-truth scenes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from experiments.bench.colour_leak import colour_leak, look_hits, predicted_clean
from experiments.bench.embedded_world import fresh_scenes
from ymn.model.components import sd_scheduler


class _ExactUNet(torch.nn.Module):
    """Returns the true training target of a known (latent, noise) pair."""

    def __init__(self, scheduler, clean: torch.Tensor, noise: torch.Tensor) -> None:
        super().__init__()
        self.scheduler, self.clean, self.noise = scheduler, clean, noise

    def forward(self, noisy, timesteps, text):
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(self.clean, self.noise, timesteps)
        else:
            target = self.noise
        return SimpleNamespace(sample=target)


@pytest.mark.parametrize(
    ("prediction_type", "zero_terminal_snr"),
    [("epsilon", False), ("v_prediction", False), ("v_prediction", True)],
)
def test_an_exact_unet_gives_back_the_clean_latent(
    tiny_components, prediction_type, zero_terminal_snr
):
    scheduler = sd_scheduler(prediction_type, zero_terminal_snr)
    clean, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    tiny_components.scheduler = scheduler
    tiny_components.unet = _ExactUNet(scheduler, clean, noise)
    for t in (999, 500):
        noisy = scheduler.add_noise(clean, noise, torch.full((2,), t))
        estimate = predicted_clean(tiny_components, noisy, t, ["", ""])
        assert torch.allclose(estimate, clean, atol=1e-3), t


def test_the_look_is_read_on_every_ground_truth_scene():
    scenes = fresh_scenes(12, one_person=True)
    hits = look_hits([image for image, _ in scenes], [meta for _, meta in scenes])
    assert hits.all()
    shuffled = [meta for _, meta in scenes[1:] + scenes[:1]]
    assert not look_hits([image for image, _ in scenes], shuffled).all()


def test_a_reading_reports_each_timestep_with_n_and_ci(tiny_components):
    result = colour_leak(tiny_components, n=2)
    assert set(result["look_from_noised_scene_without_caption"]) == {"999", "900", "700", "500"}
    assert result["look_from_pure_noise_at_t999"]["own_tags"]["n"] == 2
    assert result["prediction_type"] == "epsilon" and result["terminal_alpha_bar"] > 0
