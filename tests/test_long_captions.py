"""Captions over 77 tokens (kohya max_token_length): 75-token chunks, hidden states joined."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.conftest import small_train_command, subprocess_env
from ymn.data.tokenizer import (
    WordTokenCache,
    _tokenize_call,
    chunk_ids,
    load_clip_tokenizer,
    set_max_token_length,
    token_limit,
    tokenize,
)
from ymn.model.module import DiffusionModule
from ymn.model.prompt_settings import PromptSettings, read_prompt_settings, write_model_card
from ymn.model.text_encoder_controls import TextEncoderControls
from ymn.sample import run_sample

NAMES = "SaitoMio KonoRina AobaKokona KuraueHinata YukimuraAoi"
GRID = "fhll fvtp fhml fvmt fhmd fvmd fhmr fvmb fhri fvbt"
TAGS = ", ".join(f"tag{i} word{i}" for i in range(25))  # ~205 tokens


def five_character_caption(last: str) -> str:
    return f"5people, {NAMES}, {GRID}, {TAGS}, {last}"


def test_the_caption_is_over_77_and_under_225_tokens():
    tokenizer = load_clip_tokenizer()
    n = len(tokenizer(five_character_caption("blue sky")).input_ids)
    assert 77 < n <= 227


def test_77_is_todays_tokenization_and_225_is_kohyas_chunks():
    tokenizer = load_clip_tokenizer()
    captions = [five_character_caption("blue sky"), "1person, fhml fvmd", ""]
    today = _tokenize_call(tokenizer, captions, 77)
    set_max_token_length(tokenizer, 77)
    assert torch.equal(tokenize(tokenizer, captions), today)
    set_max_token_length(tokenizer, 225)
    assert token_limit(tokenizer) == 227
    ids = tokenize(tokenizer, captions)
    assert ids.shape == (3, 3 * 77)
    chunks = ids.view(3, 3, 77)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert (chunks[:, :, 0] == bos).all() and (chunks[:, :, -1] == eos).all()
    flat = _tokenize_call(tokenizer, captions, 227)
    assert torch.equal(chunks[:, :, 1:-1].reshape(3, -1), flat[:, 1:-1])  # nothing lost or moved
    assert (chunks[2, 1:, 1:] == eos).all()  # padding chunks of an empty caption: BOS EOS ...
    # the per-word cache and the tokenizer's own call agree at 227 as at 77
    cache = WordTokenCache.build(tokenizer)
    assert torch.equal(cache.ids(captions, 227), flat)
    set_max_token_length(tokenizer, 77)
    assert torch.equal(tokenize(tokenizer, captions), today)


def test_pad_other_than_eos_follows_kohyas_v2_rules():
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 1]])  # BOS, 6 tokens, EOS; window 5: chunks of 3
    out = chunk_ids(torch.tensor([[0, 5, 6, 7, 8, 1, 2]]), window=5, eos=1, pad=2).view(2, 5)
    assert out.tolist() == [[0, 5, 6, 7, 1], [0, 8, 1, 2, 2]]
    out = chunk_ids(torch.tensor([[0, 5, 1, 2, 2, 2, 2]]), window=5, eos=1, pad=2).view(2, 5)
    assert out.tolist() == [[0, 5, 1, 2, 2], [0, 1, 2, 2, 2]]  # empty chunk: BOS EOS pad
    assert chunk_ids(ids, window=5, eos=1, pad=1).view(2, 5).tolist() == [
        [0, 5, 6, 7, 1],
        [0, 8, 9, 1, 1],
    ]


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_hidden_states_keep_the_last_tags_at_225_not_at_77(tiny_components, clip_skip):
    controls = TextEncoderControls(clip_skip=clip_skip)
    encoder, tokenizer = tiny_components.text_encoder.eval(), tiny_components.tokenizer
    a, b = five_character_caption("blue sky"), five_character_caption("red moon")

    def encode(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_max_token_length(tokenizer, length)
        with torch.no_grad():
            return controls.encode(encoder, tokenize(tokenizer, [a, b])), tokenize(tokenizer, [a])

    short, short_ids = encode(77)
    assert short.shape[1] == 77 and torch.equal(short[0], short[1])  # the last tags are cut
    if clip_skip == 1:
        with torch.no_grad():
            assert torch.equal(short[:1], encoder(short_ids)[0])  # today's path, bit for bit
    long, _ = encode(225)
    assert long.shape[1] == 227
    assert not torch.allclose(long[0], long[1])  # the last tags reach the UNet
    assert torch.equal(long[0, :76], long[1, :76])  # the first chunk does not see them


def test_module_prompt_inputs_and_model_card(tiny_components, tmp_path):
    module = DiffusionModule(tiny_components, torch.optim.AdamW, max_token_length=225)
    inputs = module.prompt_inputs([five_character_caption("x")], None)
    assert inputs["prompt_embeds"].shape[1] == inputs["negative_prompt_embeds"].shape[1] == 227
    with pytest.raises(ValueError, match="max_token_length=100"):
        set_max_token_length(module.tokenizer, 100)
    write_model_card(tmp_path / "export", PromptSettings(225, 2))
    assert read_prompt_settings(tmp_path) == PromptSettings(225, 2)  # the run dir
    assert read_prompt_settings(tmp_path / "export" / "diffusers") == PromptSettings(225, 2)
    assert "225" in (tmp_path / "export" / "README.md").read_text()
    assert read_prompt_settings(tmp_path / "elsewhere") == PromptSettings()


@pytest.mark.slow
def test_training_at_225_trains_exports_and_samples(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    command = small_train_command(
        tmp_path, tiny_model, run_dir, "model.max_token_length=225", "trainer.max_steps=2"
    )
    command[command.index("export=false")] = "export=true"
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    card = json.loads((run_dir / "export" / "text_encoding.json").read_text())
    assert card == {"max_token_length": 225, "clip_skip": 1}
    out = tmp_path / "samples"
    prompt = five_character_caption("blue sky")
    run_sample(
        [str(run_dir), "--prompt", prompt, "--steps", "2", "--size", "64x64", "--out", str(out)]
    )
    assert json.loads((out / "samples.json").read_text())["max_token_length"] == 225
    assert (out / "000_seed0.png").is_file()
