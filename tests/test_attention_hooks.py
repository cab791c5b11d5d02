"""The attention-processor owner: the kernel runs wherever nothing captures, captures never change
outputs, a grad capture keeps the graph and a plain one does not, several clients at once."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from ymn.model.attention_hooks import (
    CapturingAttnProcessor,
    attention_hooks,
    cross_attention_layers,
)
from ymn.model.components import build_tiny
from ymn.model.fast import set_attention
from ymn.probes.attention import capture_cross_attention


@pytest.fixture()
def unet():
    return build_tiny(7).unet


def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 77, 64)


def count_calls(monkeypatch, owner, name: str) -> list[int]:
    calls = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_kernel_runs_exactly_where_nothing_captures(unet, monkeypatch) -> None:
    layers = cross_attention_layers(unet, ["mid_block"])
    n_layers = len(unet.attn_processors)
    sdpa = count_calls(monkeypatch, torch.nn.functional, "scaled_dot_product_attention")
    scores = count_calls(monkeypatch, Attention, "get_attention_scores")
    with torch.no_grad(), attention_hooks(unet).capturing(layers, lambda *_: None):
        procs = unet.attn_processors
        assert [n for n, p in procs.items() if isinstance(p, CapturingAttnProcessor)] == layers
        assert all(type(p) is AttnProcessor2_0 for n, p in procs.items() if n not in layers)
        unet(*inputs())
    assert sdpa[0] == n_layers  # every output from the fast kernel, captured layers included
    assert scores[0] == len(layers)  # softmax(QKᵀ) materialised on the captured layer only
    assert all(type(p) is AttnProcessor2_0 for p in unet.attn_processors.values())


def test_capture_does_not_change_outputs(unet) -> None:
    x, t, ctx = inputs()
    with torch.no_grad():
        reference = unet(x, t, ctx).sample
        with capture_cross_attention(unet) as store:
            captured = unet(x, t, ctx).sample
    torch.testing.assert_close(captured, reference)
    assert len(store.maps()) == len(cross_attention_layers(unet))


def test_probs_match_the_classic_processor(unet, monkeypatch) -> None:
    layer = cross_attention_layers(unet, ["mid_block"])[0]
    module = unet.get_submodule(layer.removesuffix(".processor"))
    kept: dict[str, torch.Tensor] = {}
    seen: list[torch.Tensor] = []
    original = Attention.get_attention_scores

    def spy(self, query, key, mask=None):
        probs = original(self, query, key, mask)
        if self is module:
            seen.append(probs.view(-1, self.heads, *probs.shape[1:]).mean(dim=1))
        return probs

    set_attention(type("M", (), {"unet": unet})(), sdpa=False)  # classic: scores are visible
    monkeypatch.setattr(Attention, "get_attention_scores", spy)
    with torch.no_grad(), attention_hooks(unet).capturing([layer], kept.__setitem__):
        unet(*inputs())
    assert len(seen) == 2  # the capture's and the classic kernel's own
    torch.testing.assert_close(seen[0], seen[1])
    torch.testing.assert_close(kept[layer], seen[1])


def test_grad_capture_keeps_the_graph_and_plain_capture_does_not(unet) -> None:
    layers = cross_attention_layers(unet, ["up_blocks.2"])
    with_grad: dict[str, torch.Tensor] = {}
    plain: dict[str, torch.Tensor] = {}
    hooks = attention_hooks(unet)
    loss = hooks.register(layers, with_grad.__setitem__, grad=True)
    recorder = hooks.register(layers, plain.__setitem__)  # two clients on the same layers
    unet.train()(*inputs())
    assert set(with_grad) == set(plain) == set(layers)
    for name in layers:
        assert with_grad[name].requires_grad and not plain[name].requires_grad
        torch.testing.assert_close(with_grad[name].detach(), plain[name])
    with_grad.clear(), plain.clear()
    with torch.no_grad():
        unet(*inputs())
    assert not with_grad and set(plain) == set(layers)  # grad captures: training forwards only
    with_grad.clear(), plain.clear()
    unet.eval()(*inputs())
    assert not with_grad and set(plain) == set(layers)
    hooks.unregister(recorder)
    procs = unet.attn_processors
    assert all(procs[n].captures == (loss,) for n in layers)
    hooks.unregister(loss)
    assert not any(isinstance(p, CapturingAttnProcessor) for p in unet.attn_processors.values())


def test_kernel_swap_keeps_captures_and_unknown_layers_fail(unet) -> None:
    hooks = attention_hooks(unet)
    assert attention_hooks(unet) is hooks
    layers = cross_attention_layers(unet, ["down_blocks.0"])
    capture = hooks.register(layers, lambda *_: None)
    hooks.set_kernel(AttnProcessor())
    procs = unet.attn_processors
    assert all(isinstance(procs[n].kernel, AttnProcessor) for n in layers)
    assert all(type(p) is AttnProcessor for n, p in procs.items() if n not in layers)
    hooks.unregister(capture)
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    with pytest.raises(ValueError, match="no attention layer"):
        hooks.register(["nowhere.processor"], lambda *_: None)
