"""Fast path: the options change kernels, not results; AdamW kernel choice; parameter names kept."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from ymn.model.components import build_tiny
from ymn.model.fast import FastPath, apply_fast_path


class Holder(torch.nn.Module):
    def __init__(self, components) -> None:
        super().__init__()
        self.unet, self.vae, self.text_encoder = (
            components.unet,
            components.vae,
            components.text_encoder,
        )


@pytest.fixture(scope="module")
def holder() -> Holder:
    return Holder(build_tiny(seed=0)).eval()


def unet_out(holder: Holder) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    text = torch.randn(2, 77, 64, generator=gen)
    with torch.no_grad():
        return holder.unet(latents, torch.tensor([10, 500]), text).sample


def test_sdpa_and_classic_attention_give_the_same_prediction(holder) -> None:
    apply_fast_path(holder, sdpa=False)
    assert all(isinstance(p, AttnProcessor) for p in holder.unet.attn_processors.values())
    assert holder.text_encoder.config._attn_implementation == "eager"
    classic = unet_out(holder)
    apply_fast_path(holder, sdpa=True)
    assert all(isinstance(p, AttnProcessor2_0) for p in holder.unet.attn_processors.values())
    assert holder.text_encoder.config._attn_implementation == "sdpa"
    torch.testing.assert_close(unet_out(holder), classic, rtol=1e-4, atol=1e-5)


def test_channels_last_keeps_results_and_parameter_names(holder) -> None:
    before = unet_out(holder)
    names = [n for n, _ in holder.named_parameters()]
    apply_fast_path(holder, channels_last=True)
    conv = holder.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(unet_out(holder), before, rtol=1e-4, atol=1e-5)
    assert [n for n, _ in holder.named_parameters()] == names
    holder.unet.to(memory_format=torch.contiguous_format)


def test_compile_is_in_place_and_keeps_state_dict_keys(holder, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(holder.unet, "compile", lambda **kw: calls.append(kw))
    keys = list(holder.state_dict())
    apply_fast_path(holder, compile_unet=True, compile_kwargs={"mode": "default"})
    assert calls == [{"mode": "default"}] and list(holder.state_dict()) == keys


def test_callback_applies_once(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr("ymn.model.fast.apply_fast_path", lambda m, **kw: seen.append(kw))
    callback = FastPath(channels_last=True)
    callback.setup(None, object(), "fit")
    callback.setup(None, object(), "validate")
    assert seen == [{"sdpa": True, "channels_last": True, "compile_unet": False}]
