"""Issue 8 remedies: localization loss, control tokens, count-aware noise prior."""

from __future__ import annotations

import random
from functools import partial
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from ymn.data.captions import CaptionConfig, build_caption
from ymn.data.tokenizer import token_indices
from ymn.model.attention_hooks import CapturingAttnProcessor, attention_hooks
from ymn.model.components import build_tiny, load_components
from ymn.model.module import DiffusionModule
from ymn.probes.runner import ProbeConfig, initial_latents
from ymn.remedies.attn_localization import (
    AttnLocalizationLoss,
    cell_box,
    default_layers,
    enlarge_box,
    layer_terms,
    localization_terms,
    region_mask,
    sample_regions,
)
from ymn.remedies.control_tokens import (
    CONTROL_TOKENS,
    add_control_tokens,
    load_with_control_tokens,
    restore_control_tokens,
)
from ymn.remedies.noise_prior import blob_map, count_noise_prior, default_sigma, spread_centres

META = {
    "n_people": 2,
    "characters": ["SaitoMio", "OnoHaru"],
    "facepos": [[0.05, 0.1, 0.25, 0.3], [0.6, 0.55, 0.8, 0.75]],
    "general": "aniscreen",
    "tags": ["outdoors"],
}
NO_DROP = CaptionConfig(dropout=0.0, tag_shuffle=False)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(0)


# ----------------------------------------------------------------------------- loss core


def leaky_map(mask: torch.Tensor, leak: float) -> torch.Tensor:
    """A map with (1 - leak) of its mass spread inside mask and `leak` spread outside."""
    inside = mask / mask.sum()
    outside = (1 - mask) / (1 - mask).sum()
    return (1 - leak) * inside + leak * outside


@pytest.mark.parametrize("mode", ["mass_outside", "balanced"])
def test_loss_minimal_inside_and_grows_with_leak(mode):
    mask = region_mask(cell_box((1, 3), 5), 10, 10)
    leaks = [0.0, 0.1, 0.3, 0.6, 0.9]
    maps = torch.stack([leaky_map(mask, leak) for leak in leaks])
    terms = localization_terms(maps, mask.expand_as(maps), mode)
    assert torch.all(terms[1:] > terms[:-1])
    if mode == "mass_outside":
        assert terms[0].item() == pytest.approx(0.0, abs=1e-6)
        assert terms.tolist() == pytest.approx(leaks, abs=1e-5)


def test_region_mask_is_area_overlap():
    assert region_mask((0, 0, 1, 1), 4, 6).sum().item() == pytest.approx(24)
    # a 5x5 grid cell on an 8x8 map covers 1/25 of the area, fractional edges included
    assert region_mask(cell_box((2, 2), 5), 8, 8).sum().item() == pytest.approx(64 / 25)
    mask = region_mask((0.0, 0.0, 0.5, 0.25), 4, 4)
    assert mask[0, :2].tolist() == [1.0, 1.0] and mask[1:].sum().item() == 0.0


def test_enlarge_box_scales_about_centre_and_clips():
    assert enlarge_box((0.4, 0.4, 0.6, 0.6), 1.0) == pytest.approx((0.3, 0.3, 0.7, 0.7))
    assert enlarge_box((0.0, 0.0, 0.2, 0.2), 1.0) == pytest.approx((0.0, 0.0, 0.3, 0.3))


def test_sample_regions_find_names_and_grid_pairs(tiny):
    caption = build_caption(META, NO_DROP, random.Random(0))
    regions = sample_regions(tiny.tokenizer, 3, caption, META, enlarge=0.0)
    boxes = {r.positions: r.box for r in regions}
    akane = tuple(token_indices(tiny.tokenizer, caption, "SaitoMio"))
    assert boxes[akane] == pytest.approx(tuple(META["facepos"][0]))
    pair = tuple(token_indices(tiny.tokenizer, caption, "fhll fvmt"))
    assert boxes[pair] == pytest.approx(cell_box((0, 1), 5))
    assert {r.sample for r in regions} == {3} and len(regions) == 4
    assert sample_regions(tiny.tokenizer, 0, " ", META) == []  # dropped caption: nothing


def test_layer_terms_zero_when_tokens_attend_their_region(tiny):
    caption = build_caption(META, NO_DROP, random.Random(0))
    regions = sample_regions(tiny.tokenizer, 0, caption, META)
    probs = torch.full((1, 100, 77), 1e-9)
    for region in regions:  # put each token's attention inside its box on a 10x10 map
        mask = region_mask(region.box, 10, 10).flatten()
        for pos in region.positions:
            probs[0, :, pos] = (mask == 1).float()
    terms = layer_terms(probs, regions, (10, 10))
    assert terms.max().item() < 1e-6


# ----------------------------------------------------------------------------- processor


def fake_module(components):
    return SimpleNamespace(
        unet=components.unet,
        tokenizer=components.tokenizer,
        vae=components.vae,
        device=torch.device("cpu"),
    )


def unet_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 77, 64)


def test_processor_matches_default_and_leaves_other_layers():
    components = build_tiny(1)
    unet = components.unet.train()
    before = dict(unet.attn_processors)
    x, t, ctx = unet_inputs()
    reference = unet(x, t, ctx).sample
    loss = AttnLocalizationLoss(weight=1.0)
    loss.attach(fake_module(components))
    chosen = set(loss.capture.layers)
    assert chosen == set(default_layers(unet))
    assert chosen and all(".attn2." in n for n in chosen)
    after = unet.attn_processors
    for name, proc in after.items():
        if name in chosen:
            assert isinstance(proc, CapturingAttnProcessor) and proc.kernel is before[name]
        else:
            assert proc is before[name]
    out = unet(x, t, ctx).sample
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    assert set(loss.store) == chosen  # training forward: probabilities kept
    loss.store.clear()
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, ctx).sample, reference, rtol=1e-4, atol=1e-5)
    assert not loss.store  # no grad: the fast fallback ran


def test_processors_survive_a_later_processor_swap():
    from diffusers.models.attention_processor import AttnProcessor

    components = build_tiny(2)
    loss = AttnLocalizationLoss()
    loss.attach(fake_module(components))
    attention_hooks(components.unet).set_kernel(AttnProcessor())  # e.g. the fast-path callback
    components.unet.train()(*unet_inputs())
    procs = components.unet.attn_processors
    assert all(isinstance(procs[n], CapturingAttnProcessor) for n in loss.capture.layers)
    assert all(isinstance(procs[n].kernel, AttnProcessor) for n in loss.capture.layers)
    assert set(loss.store) == set(loss.capture.layers)


def test_default_layers_pick_the_finest_levels(tiny):
    names = default_layers(tiny.unet)  # tiny: 16, 8, 4 → the 16 and 8 levels
    assert any(n.startswith("down_blocks.0.") for n in names)
    assert any(n.startswith("up_blocks.2.") for n in names)
    assert not any(n.startswith(("mid_block", "down_blocks.2.", "up_blocks.1.")) for n in names)


def loss_batches(tokenizer, n_batches: int, size: int = 64) -> list[dict]:
    batches = []
    for b in range(n_batches):
        g = torch.Generator().manual_seed(b)
        metas = [META, {**META, "characters": ["OnoHaru", "SaitoMio"]}]
        captions = [build_caption(m, NO_DROP, random.Random(b)) for m in metas]
        batches.append(
            {
                "pixel_values": torch.rand(2, 3, size, size, generator=g) * 2 - 1,
                "captions": captions,
                "keys": ["a", "b"],
                "meta": metas,
            }
        )
    return batches


def test_loss_has_gradient_on_selected_layers():
    components = build_tiny(3)
    module = fake_module(components)
    loss = AttnLocalizationLoss(weight=1.0)
    loss.attach(module)
    batch = loss_batches(components.tokenizer, 1)[0]
    ids = components.tokenizer(
        batch["captions"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    components.unet.train()
    x, t, _ = unet_inputs()
    components.unet(x, t, components.text_encoder(ids)[0])
    value = loss(batch)
    assert torch.isfinite(value) and 0 < value.item() <= 1
    value.backward()
    name = loss.capture.layers[0].removesuffix(".processor")
    assert components.unet.get_submodule(name).to_k.weight.grad.abs().sum() > 0
    assert loss(batch).item() == 0.0  # the store is consumed per step


def test_two_training_steps_log_the_loss(tmp_path):
    components = build_tiny(4)
    module = DiffusionModule(
        components,
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        losses={"attn_localization": AttnLocalizationLoss(weight=0.1)},
    )
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    batches = loss_batches(components.tokenizer, 2)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    logged = trainer.callback_metrics
    assert "train/attn_localization" in logged
    assert torch.isfinite(logged["train/attn_localization"])
    assert logged["train/attn_localization"].item() > 0
    assert torch.isfinite(logged["train/loss"])


# ----------------------------------------------------------------------------- control tokens


def test_control_tokens_are_single_ids_initialised_from_pieces():
    components = build_tiny(0)
    old = components.text_encoder.get_input_embeddings().weight.detach().clone()
    pieces = components.tokenizer("3people", add_special_tokens=False).input_ids
    assert len(pieces) > 1
    added = add_control_tokens(components)
    assert added == list(CONTROL_TOKENS)
    tokenizer = components.tokenizer
    assert tokenizer.tokenize("3people, fhml fvmd, 13people")[:4] == [
        "3people",
        ",</w>",
        "fhml",
        "fvmd",
    ]
    weight = components.text_encoder.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer) == 49408 + len(CONTROL_TOKENS)
    new_id = tokenizer.convert_tokens_to_ids("3people")
    torch.testing.assert_close(weight[new_id], old[pieces].mean(dim=0))
    torch.testing.assert_close(weight[:49408], old)
    assert add_control_tokens(components) == []  # idempotent


def test_control_tokens_survive_export_and_reload(tmp_path):
    from ymn.model.export import save_diffusers
    from ymn.model.single_file import export_single_file, load_single_file

    components = build_tiny(0)
    add_control_tokens(components, init="words")
    with torch.no_grad():  # as if trained
        components.text_encoder.get_input_embeddings().weight[-3:] += 1.0
    prompt = "2people, fhll fvtp fhri fvbt"
    ids = components.tokenizer(prompt).input_ids
    weight = components.text_encoder.get_input_embeddings().weight
    save_diffusers(components, tmp_path / "diffusers")
    folder = load_components(pretrained=str(tmp_path / "diffusers"))
    assert folder.tokenizer(prompt).input_ids == ids
    torch.testing.assert_close(folder.text_encoder.get_input_embeddings().weight, weight)
    again = load_with_control_tokens(pretrained=str(tmp_path / "diffusers"))
    torch.testing.assert_close(again.text_encoder.get_input_embeddings().weight, weight)

    path = export_single_file(components, tmp_path / "model.safetensors")
    single = load_single_file(path)
    torch.testing.assert_close(single.text_encoder.get_input_embeddings().weight, weight)
    assert restore_control_tokens(single) == list(CONTROL_TOKENS)
    assert single.tokenizer(prompt).input_ids == ids


def test_restore_refuses_unknown_extra_rows():
    components = build_tiny(0)
    components.text_encoder.resize_token_embeddings(49408 + 3, mean_resizing=False)
    with pytest.raises(ValueError, match="diffusers folder"):
        restore_control_tokens(components)


# ----------------------------------------------------------------------------- noise prior


def count_blobs(latents: torch.Tensor, sigma: float) -> int:
    """Connected regions above half the maximum of the smoothed channel-mean map."""
    smoothed = ndimage.gaussian_filter(latents.reshape(-1, *latents.shape[-2:]).mean(0), sigma)
    return int(ndimage.label(smoothed > 0.5 * smoothed.max())[1])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_noise_prior_has_n_blobs(n):
    for size in (16, 64):
        bumps = blob_map(spread_centres(n), size, size, default_sigma(n, size, size), None)
        assert ndimage.label(bumps.numpy() > 0.5)[1] == n
    for seed in range(3):
        latents = count_noise_prior(n, (1, 4, 64, 64), torch.Generator().manual_seed(seed))
        assert count_blobs(latents.numpy(), default_sigma(n, 64, 64)) == n


def test_noise_prior_is_reproducible_and_standard():
    make = lambda seed: count_noise_prior(3, (4, 32, 32), torch.Generator().manual_seed(seed))  # noqa: E731
    torch.testing.assert_close(make(7), make(7))
    assert not torch.equal(make(7), make(8))
    latents = make(7)
    assert latents.mean(dim=(-2, -1)).abs().max() < 1e-5
    assert (latents.std(dim=(-2, -1)) - 1).abs().max() < 1e-5


def test_noise_prior_follows_layout_cells():
    latents = count_noise_prior(1, (1, 4, 64, 64), torch.Generator().manual_seed(0), [(4, 0)])
    smoothed = ndimage.gaussian_filter(latents[0].mean(0).numpy(), 4)
    row, col = np.unravel_index(int(np.argmax(smoothed)), smoothed.shape)
    assert (col * 5 // 64, row * 5 // 64) == (4, 0)


def test_probe_initial_latents_option(tiny):
    module = SimpleNamespace(unet=tiny.unet, vae=tiny.vae, device=torch.device("cpu"))
    probe = {"count": 2, "seed": 3, "cells": [[0, 2], [4, 2]]}
    assert initial_latents(module, probe, ProbeConfig()) is None
    latents = initial_latents(module, probe, ProbeConfig(noise_prior=True))
    side = tiny.unet.config.sample_size  # the native size's latent side
    assert latents.shape == (1, tiny.unet.config.in_channels, side, side)
    torch.testing.assert_close(
        latents, initial_latents(module, probe, ProbeConfig(noise_prior=True))
    )


def test_probe_capture_and_the_loss_share_layers():
    from ymn.probes.attention import capture_cross_attention

    components = build_tiny(5)
    loss = AttnLocalizationLoss()
    loss.attach(fake_module(components))
    x, t, ctx = unet_inputs()
    with torch.no_grad(), capture_cross_attention(components.unet) as store:
        components.unet.eval()(x, t, ctx)
    assert len(store.maps()) == len(cross_attention_layers_of(components.unet))
    procs = components.unet.attn_processors
    assert all(procs[n].captures == (loss.capture,) for n in loss.capture.layers)


def cross_attention_layers_of(unet) -> list[str]:
    return [k for k in unet.attn_processors if ".attn2." in k]


def test_the_localization_loss_arm_builds_from_its_hydra_config():
    """`+loss=attn_localization` on the toy recipe builds the module as ymn-train does (the
    study arm failed in instantiate: the losses dict holds tensors)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from ymn.paths import CONFIG_DIR
    from ymn.remedies.attn_localization import AttnLocalizationLoss
    from ymn.train import build_model

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=toy_phase1", "+loss=attn_localization",
                                            "paths.run_dir=/tmp/ymn-compose"])  # fmt: skip
    GlobalHydra.instance().clear()
    module = build_model(cfg, loss_guard=instantiate(cfg.faults))
    assert isinstance(module.aux_losses["attn_localization"], AttnLocalizationLoss)
