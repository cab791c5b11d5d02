"""Cross-attention capture on the tiny UNet; pooling and attention metrics on constructed maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ymn.data.captions import CaptionConfig
from ymn.data.tokenizer import token_indices, token_spans, tokenize
from ymn.model.attention_hooks import layer_shape
from ymn.model.components import build_tiny
from ymn.probes.attention import (
    capture_cross_attention,
    grid_token_maps,
    image_attention_record,
    mass_in_cell,
    normalized_entropy,
    pool_to_grid,
    summarize_attention,
)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(0)


def test_capture_shapes_and_restore(tiny) -> None:
    unet = tiny.unet
    before = dict(unet.attn_processors)
    ids = tokenize(tiny.tokenizer, ["2people, fhml fvmd fhmr fvmd", "1person, fhmd fvmd"])
    with torch.no_grad():
        text = tiny.text_encoder(ids)[0]
        reference = unet(torch.zeros(2, 4, 16, 16), torch.tensor([500, 500]), text).sample
        with capture_cross_attention(unet) as store:
            out = unet(torch.zeros(2, 4, 16, 16), torch.tensor([500, 500]), text).sample
            unet(torch.zeros(2, 4, 16, 16), torch.tensor([100, 100]), text)
    torch.testing.assert_close(out, reference)  # recording does not change the output
    maps = store.maps()
    assert len(maps) == sum(".attn2." in k for k in before)
    sizes = {layer_shape(m.shape[1], (16, 16)) for m in maps.values()}
    assert sizes == {(16, 16), (8, 8), (4, 4), (2, 2)}
    for m in maps.values():
        assert m.shape[0] == 2 and m.shape[2] == 77
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))  # softmax over tokens
    assert set(store.calls.values()) == {2}
    after = unet.attn_processors
    assert all(after[k] is v for k, v in before.items())
    pooled = grid_token_maps(maps, (16, 16), 5)
    assert pooled.shape == (2, 5, 5, 77)


def test_layer_filter_and_restore_after_error(tiny) -> None:
    unet = tiny.unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_cross_attention(unet, layers=["mid_block"]):
            assert (
                sum(
                    type(p).__name__ == "CapturingAttnProcessor"
                    for p in unet.attn_processors.values()
                )
                == 1
            )  # noqa: E501
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    with pytest.raises(ValueError, match="no cross-attention layer"):
        with capture_cross_attention(unet, layers=["nowhere"]):
            pass


def test_token_indices_cover_all_pieces(tiny) -> None:
    tok = tiny.tokenizer
    prompt = "3people, fhml fvmd fhml fvmd, aniscreen"
    pieces = tok.tokenize("3people")
    assert token_indices(tok, prompt, "3people") == list(range(1, 1 + len(pieces)))
    spans = token_spans(tok, prompt, "fhml fvmd")
    assert len(spans) == 2 and all(len(s) == len(tok.tokenize("fhml fvmd")) for s in spans)
    assert token_indices(tok, prompt, "fhri fvbt") == []


def test_pooling_keeps_uniform_maps_uniform() -> None:
    for size in (2, 4, 16, 20):
        pooled = pool_to_grid(torch.ones(1, size, size, 3), 5)
        torch.testing.assert_close(pooled, torch.ones(1, 5, 5, 3))


def test_mass_in_target_is_one_when_the_map_is_inside_the_cell() -> None:
    spatial = torch.zeros(1, 20, 20, 1)
    spatial[0, 8:12, 4:8, 0] = torch.rand(4, 4) + 0.1  # rows 8-11 = row 2, cols 4-7 = col 1
    pooled = pool_to_grid(spatial, 5)[0, :, :, 0].numpy()
    assert mass_in_cell(pooled, (1, 2)) == pytest.approx(1.0)
    assert mass_in_cell(pooled, (2, 1)) == 0.0
    assert mass_in_cell(np.ones((5, 5)), (0, 0)) == pytest.approx(0.04)
    assert normalized_entropy(np.ones((5, 5))) == pytest.approx(1.0)
    assert normalized_entropy(pooled) == pytest.approx(0.0)


def test_image_record_on_constructed_maps(tiny) -> None:
    tok = tiny.tokenizer
    prompt = "2people, fhml fvmd fhri fvtp"
    maps = np.full((5, 5, 77), 1e-3)
    for col, row, phrase in [(1, 2, "fhml fvmd"), (4, 0, "fhri fvtp")]:
        maps[row, col, token_indices(tok, prompt, phrase)] = 1.0
    maps[:, :, token_indices(tok, prompt, "2people")] = 1.0  # count token: uniform
    record = image_attention_record(maps, tok, prompt, 2, [(1, 2), (4, 0)], CaptionConfig())
    assert [f["argmax"] for f in record["faces"]] == [[1, 2], [4, 0]]
    assert all(f["mass"] > 0.9 for f in record["faces"])
    assert record["count_entropy"] == pytest.approx(1.0)
    wrong = image_attention_record(maps, tok, prompt, 2, [(3, 3)], CaptionConfig())
    assert wrong["faces"] == []  # its phrase is not in the prompt
    metrics = summarize_attention([record], "probe/attn")
    assert metrics["probe/attn/grid_argmax_acc"] == 1.0
    assert metrics["probe/attn/grid_mass_in_target"] > 0.9
