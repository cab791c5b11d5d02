"""Text-encoder controls: own lr, frozen embeddings / first layers, CLIP skip (A1111 counting)."""

from __future__ import annotations

import pytest
import torch

from ymn.data.tokenizer import tokenize
from ymn.model.module import DiffusionModule
from ymn.model.text_encoder_controls import TextEncoderControls


def _module(components, **controls) -> DiffusionModule:
    return DiffusionModule(components, torch.optim.AdamW, text_encoder_controls=controls)


def _one_step(module: DiffusionModule) -> None:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    ids = tokenize(module.tokenizer, ["1girl, solo", "2girls, mountain"])
    loss = module.diffusion_loss(
        latents, ids, torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 900])
    )
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=1.0)
    loss.mean().backward()
    optimizer.step()


def test_frozen_embeddings_and_first_layer_do_not_move_the_rest_does(tiny_components):
    module = _module(tiny_components, freeze_embeddings=True, freeze_layers=1)
    model = module.text_encoder
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_step(module)
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("embeddings.", "encoder.layers.0."))]
    trained = [k for k in before if k.startswith("encoder.layers.1.")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def test_clip_skip_2_is_the_penultimate_layer_through_the_final_norm(tiny_components):
    module = _module(tiny_components, clip_skip=2)
    ids = tokenize(module.tokenizer, ["1girl, red hair"])
    with torch.no_grad():
        ours = module.encode_text(ids)
        out = module.text_encoder(ids, output_hidden_states=True)
        expected = module.text_encoder.final_layer_norm(out.hidden_states[-2])
    assert not torch.allclose(ours, out[0])
    assert torch.equal(ours, expected)


def test_samples_use_the_clip_skip_layer(tiny_components):
    """A clip-skip model samples from its own embeddings: same seed, different image than skip 1."""
    kwargs = dict(prompts=["1girl"], seeds=[0], size=(32, 32), steps=2)
    skip1 = _module(tiny_components).log_images(**kwargs)[0]
    skip2 = _module(tiny_components, clip_skip=2).log_images(**kwargs)[0]
    again = _module(tiny_components, clip_skip=2).log_images(**kwargs)[0]
    assert skip2.tobytes() == again.tobytes() != skip1.tobytes()


def test_own_text_encoder_lr_makes_two_parameter_groups(tiny_components):
    module = _module(tiny_components, lr=5e-6)
    optimizer = module.configure_optimizers()
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert len(lrs) == 2 and lrs[1] == 5e-6 and lrs[0] != 5e-6
    n_params = sum(len(group["params"]) for group in optimizer.param_groups)
    assert n_params == len(module.trainable_parameters())


def test_default_controls_keep_one_group(tiny_components):
    assert len(_module(tiny_components).configure_optimizers().param_groups) == 1


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"clip_skip": 0}, "clip_skip"),
        ({"freeze_layers": -1}, "freeze_layers"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"model.text_encoder_controls.{key}"):
        TextEncoderControls(**kwargs)


def test_more_layers_than_the_encoder_has_is_refused(tiny_components):
    with pytest.raises(ValueError, match="has only 2 layers"):
        _module(tiny_components, clip_skip=3)
