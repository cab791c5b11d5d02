import pytest
import torch

from ymn.model.noise import pyramid_noise

SHAPE = (64, 4, 32, 32)


def _region_mean_std(noise: torch.Tensor) -> float:
    """Std over samples of the mean of each 16x16 quarter: what a model reads a region's colour
    from."""
    quarters = noise.unfold(2, 16, 16).unfold(3, 16, 16).mean(dim=(-1, -2))
    return float(quarters.std())


def test_zero_discount_is_the_plain_gaussian_draw():
    drawn = pyramid_noise(SHAPE, torch.Generator().manual_seed(1), 0.0)
    assert torch.equal(drawn, torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)))


def test_pyramid_noise_has_unit_std_and_destroys_region_means():
    iid = pyramid_noise(SHAPE, torch.Generator().manual_seed(2), 0.0)
    pyramid = pyramid_noise(SHAPE, torch.Generator().manual_seed(2), 0.8)
    assert torch.allclose(pyramid.std(dim=(1, 2, 3)), torch.ones(SHAPE[0]), atol=1e-5)
    assert _region_mean_std(iid) == pytest.approx(1 / 16, rel=0.15)
    assert _region_mean_std(pyramid) > 5 * _region_mean_std(iid)


def test_pyramid_noise_is_deterministic_per_generator():
    a = pyramid_noise(SHAPE, torch.Generator().manual_seed(3), 0.5)
    b = pyramid_noise(SHAPE, torch.Generator().manual_seed(3), 0.5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("discount", [-0.1, 1.0])
def test_a_discount_outside_0_1_is_refused(discount):
    with pytest.raises(ValueError, match="discount"):
        pyramid_noise(SHAPE, torch.Generator(), discount)
