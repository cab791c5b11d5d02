"""Stage 1c's contrastive objective (ymn.model.contrastive) and its place in the tiny base."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tests.conftest import train_tiny_base as main
from ymn.model.contrastive import ContrastiveHeads, caption_embedding, contrastive_loss

EOS = 49407


def test_matched_pairs_score_lower_than_shuffled_pairs_and_retrieve_themselves():
    vectors = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    scale = ContrastiveHeads(text_width=16).logit_scale
    matched, stats = contrastive_loss(vectors, vectors, scale)
    shuffled, shuffled_stats = contrastive_loss(vectors, vectors.roll(1, dims=0), scale)
    assert stats["retrieval"] == 1.0 and shuffled_stats["retrieval"] == 0.0
    assert float(matched) < float(shuffled)


def test_caption_embedding_ignores_the_padding_after_the_first_eos():
    ids = torch.tensor([[49406, 10, 11, EOS, EOS, EOS]])
    hidden = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(1))
    changed = hidden.clone()
    changed[:, 4:] += 100.0
    assert torch.equal(caption_embedding(hidden, ids, EOS), caption_embedding(changed, ids, EOS))
    assert torch.allclose(caption_embedding(hidden, ids, EOS), hidden[:, :4].mean(dim=1))


def _base(tmp_path, name: str, text_steps: int) -> tuple:
    work, out = tmp_path / f"{name}-work", tmp_path / name
    flags = ["--images", "16", "--vae-steps", "1", "--vae-batch", "2", "--decoder-steps", "0"]
    flags += ["--unet-steps", "0", "--text-steps", str(text_steps), "--text-batch", "16"]
    flags += ["--text-lr", "3e-3", "--seed", "4", "--work", str(work), "--out", str(out)]
    assert main(flags) == 0
    return work, load_file(out / "text_encoder" / "model.safetensors")


def test_text_stage_learns_to_pair_captions_with_scenes_and_hands_its_encoder_to_stage2(
    tmp_path,
):
    work, pretrained = _base(tmp_path, "on", text_steps=80)
    history = json.loads((work / "stage1c_text.json").read_text())["history"]
    first, last = history[:10], history[-10:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.2
    assert mean(last, "retrieval") > 2.5 / 16  # chance: 1/16 (sd over 160 draws: 0.3/16)
    checkpoint = load_file(work / "stage1c_text.safetensors")
    for key, value in pretrained.items():  # the saved folder names keys as transformers saves
        stored = checkpoint["module.text_encoder." + key.removeprefix("text_model.")]
        assert torch.equal(value, stored.half()), key
    _, untouched = _base(tmp_path, "off", text_steps=0)
    assert not (tmp_path / "off-work" / "stage1c_text.json").exists()
    assert any(not torch.equal(pretrained[k], untouched[k]) for k in pretrained)


def test_other_hair_swaps_only_the_hair_tag():
    from experiments.bench.text_stage import HAIR_TAGS, other_hair

    caption = "1girl, solo, red hair, twintails, outdoors"
    swapped = other_hair(caption, "red hair")
    assert "red hair" not in swapped
    assert swapped.split(", ")[:2] == ["1girl", "solo"] and swapped.endswith("twintails, outdoors")
    assert sum(tag in swapped for tag in HAIR_TAGS) == 1


def test_text_stage_reading_is_at_chance_when_captions_carry_nothing(tmp_path, monkeypatch):
    from experiments.bench import text_stage

    work, _ = _base(tmp_path, "short", text_steps=2)
    reading = text_stage.run(work, n=8)
    assert reading["stage1c_step"] == 2 and reading["caption_tags"] == "hair"
    assert reading["retrieval"]["n"] == 64 and reading["hair_tag_preferred"]["n"] == 8
    load = text_stage.load_text_stage

    def blind(folder):  # a projection that maps every caption to the same point
        text_encoder, heads = load(folder)
        torch.nn.init.zeros_(heads.text_projection.weight)
        return text_encoder, heads

    monkeypatch.setattr(text_stage, "load_text_stage", blind)
    blind_reading = text_stage.run(work, n=8)
    assert blind_reading["hair_tag_preferred"]["k"] == 0  # never strictly nearer
    assert blind_reading["retrieval"]["k"] == 1  # argmax of a tie: the first of the 64


def test_text_stage_reads_captions_in_the_tag_set_its_work_folder_records(tmp_path, monkeypatch):
    from experiments.bench import text_stage
    from ymn.model.tiny_base_data import BASE_CAPTIONS

    work, _ = _base(tmp_path, "described", text_steps=1)
    (work / BASE_CAPTIONS).write_text(json.dumps({"caption_tags": "look"}))
    captions: list[str] = []
    embed = text_stage.embed_captions

    def recording(text_encoder, heads, tokenizer, texts):
        captions.extend(texts)
        return embed(text_encoder, heads, tokenizer, texts)

    monkeypatch.setattr(text_stage, "embed_captions", recording)
    reading = text_stage.run(work, n=4)
    assert reading["caption_tags"] == "look"
    assert captions and all(" shirt" in caption for caption in captions)
