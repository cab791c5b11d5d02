"""The tiny base's VAE losses (`ymn.model.vae_training`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ymn.model.vae_training import colour_balanced_l1


def two_colour_image(small_pixels: int) -> torch.Tensor:
    """A 1 x 3 x 8 x 8 image in [-1, 1]: grey, with `small_pixels` pixels of pink."""
    image = torch.full((1, 3, 8, 8), 0.0)
    pink = torch.tensor([240, 120, 180]) / 127.5 - 1.0
    image[0, :, 0, :small_pixels] = pink[:, None]
    return image


def test_a_single_colour_gives_plain_l1():
    target = torch.full((2, 3, 4, 4), 0.2)
    recon = target + torch.linspace(-0.3, 0.3, 96).reshape(2, 3, 4, 4)
    assert colour_balanced_l1(recon, target) == pytest.approx(F.l1_loss(recon, target).item())


def test_a_small_colour_region_weighs_as_much_as_a_large_one():
    """An error of 0.5 on the 2 pink pixels of 64: plain L1 sees 1/32 of it, the balanced L1
    half of it (two colours, one wrong)."""
    target = two_colour_image(small_pixels=2)
    recon = target.clone()
    recon[0, :, 0, :2] += 0.5
    assert F.l1_loss(recon, target).item() == pytest.approx(0.5 * 2 / 64)
    assert colour_balanced_l1(recon, target).item() == pytest.approx(0.25)


def test_each_pixel_is_weighed_by_one_over_its_colour_s_share():
    """Gradients: a pixel of a 3-pixel colour pulls 61/3 times harder than one of a 61-pixel
    colour, so the rare colour is not blended into the common one."""
    target = two_colour_image(small_pixels=3)
    recon = (target + 0.1).requires_grad_(True)
    colour_balanced_l1(recon, target).backward()
    pink_grad = recon.grad[0, :, 0, 0].abs().sum()
    grey_grad = recon.grad[0, :, 4, 4].abs().sum()
    assert grey_grad > 0
    assert (pink_grad / grey_grad).item() == pytest.approx(61 / 3)
