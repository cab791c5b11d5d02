"""Face-weighted loss: weight maps from face boxes (after crop and flip), mean 1 per image."""

from __future__ import annotations

import pytest
import torch

from ymn.data.buckets import CropPlan, transform_meta
from ymn.model.face_weighted_loss import face_mask, face_weight_maps
from ymn.model.module import DiffusionModule


def test_mask_covers_the_latent_pixels_a_box_touches():
    mask = face_mask([[0.25, 0.5, 0.5, 0.75]], 8, 8)
    assert mask[4:6, 2:4].eq(1).all() and mask.sum() == 4


def test_maps_weigh_faces_by_the_factor_and_average_one():
    metas = [{"facepos": [[0.0, 0.0, 0.5, 0.5]]}, {"facepos": []}]
    maps = face_weight_maps(metas, 8, 8, factor=4.0)
    assert maps.shape == (2, 1, 8, 8)
    assert torch.allclose(maps.mean(dim=(1, 2, 3)), torch.ones(2))
    assert maps[0, 0, 0, 0] / maps[0, 0, 7, 7] == pytest.approx(4.0)
    assert torch.equal(maps[1], torch.ones(1, 8, 8))  # no face: as before


def test_a_flipped_crop_moves_the_weights_with_the_face():
    meta = {"facepos": [[0.0, 0.0, 0.25, 0.25]], "n_people": 1}
    flipped = transform_meta(meta, (64, 64), CropPlan(1.0, (0, 0, 64, 64)), flip=True)
    plain, mirrored = face_weight_maps([meta, flipped], 8, 8, factor=3.0)
    assert torch.equal(mirrored, torch.flip(plain, dims=[-1]))


def test_the_module_loss_is_the_weighted_mean(tiny_components):
    module = DiffusionModule(tiny_components, torch.optim.AdamW, face_loss_weight=5.0)
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    batch = {"meta": [{"facepos": [[0.1, 0.1, 0.4, 0.4]]}, {"facepos": []}]}
    ids = module.batch_input_ids({"captions": ["1girl", "2girls"]})
    t = torch.tensor([100, 700])
    weight = module.face_weights(batch, latents)
    with torch.no_grad():
        weighted = module.diffusion_loss(latents, ids, noise, t, weight)
        plain = module.diffusion_loss(latents, ids, noise, t)
    assert weighted[1].item() == pytest.approx(plain[1].item())  # no face: unchanged
    assert weighted[0].item() != pytest.approx(plain[0].item())
    off = DiffusionModule(tiny_components, torch.optim.AdamW)
    assert off.face_weights(batch, latents) is None


def test_bad_factor_and_missing_boxes_are_named(tiny_components):
    with pytest.raises(ValueError, match="model.face_loss_weight"):
        face_weight_maps([{}], 4, 4, factor=0.0)
    module = DiffusionModule(tiny_components, torch.optim.AdamW, face_loss_weight=2.0)
    with pytest.raises(KeyError, match="face_loss_weight"):
        module.face_weights({"captions": ["x"]}, torch.zeros(1, 4, 4, 4))
