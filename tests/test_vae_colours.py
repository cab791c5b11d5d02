"""experiments.bench.vae_colours: per-colour reconstruction errors of a VAE round trip."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.bench.vae_colours import colour_errors, vae_colour_errors
from ymn.data.synthetic_draw import SKIN

PINK = (240, 120, 180)


def pink_block_image() -> np.ndarray:
    """1 x 8 x 8 x 3: skin, with a 4 x 4 block of pink (its inner 2 x 2 pixels are read)."""
    image = np.tile(np.array(SKIN), (1, 8, 8, 1))
    image[0, 2:6, 2:6] = PINK
    return image


def test_a_colour_turned_into_skin_is_read_as_skin_with_its_error():
    truth = pink_block_image()
    recon = np.tile(np.array(SKIN), (1, 8, 8, 1))
    reading = colour_errors(truth, recon, PINK)
    assert reading["pixels"] == 4 and reading["read_as_skin"] == 1.0
    assert reading["max_channel_error_median"] == pytest.approx(212 - 120)


def test_an_exact_round_trip_has_no_error_and_an_absent_colour_no_pixels():
    truth = pink_block_image()
    reading = colour_errors(truth, truth.copy(), PINK)
    assert reading["max_channel_error_p90"] == 0.0 and reading["read_as_skin"] == 0.0
    assert colour_errors(truth, truth, (1, 2, 3)) == {"pixels": 0}


def test_every_named_colour_is_read_from_a_vae(tiny_components):
    result = vae_colour_errors(tiny_components.vae.eval(), n=2)
    assert result["n_images"] == 2 and "hair UedaFumi" in result["colours"]
    assert result["colours"]["skin"]["pixels"] > 0
