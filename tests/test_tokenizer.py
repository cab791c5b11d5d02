"""The offline tokenizer must give OpenAI CLIP's ids (SD 1.x was trained with them)."""

import importlib.util
import tempfile
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from ymn.data.tokenizer import clip_bpe_path, load_clip_tokenizer, save_tokenizer

CAPTIONS = [
    "3people, KuraueHinata AobaKokona, anishot yamaS2EP04, fhml fvmd fhmr fvmt, brown hair",
    "1person, fhll fvtp, solo, 1girl",
    "manypeople, from yama no susume, by artist_name, explicit",
    "Ünïcode  and   spaces!!",
]


@pytest.fixture(scope="module")
def reference():
    """OpenAI's SimpleTokenizer, loaded from its file (importing `clip` needs torchvision)."""
    path = clip_bpe_path().parent / "simple_tokenizer.py"
    spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


@pytest.mark.parametrize("caption", CAPTIONS)
def test_ids_equal_openai_clip(reference, caption):
    tokenizer = load_clip_tokenizer()
    expected = [49406, *reference.encode(caption), 49407]
    assert tokenizer(caption).input_ids == expected


def test_vocab_size_and_length():
    tokenizer = load_clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    ids = tokenizer("3people", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == tokenizer.pad_token_id == 49407


def test_control_tokens_split_into_common_pieces():
    tokenizer = load_clip_tokenizer()
    assert tokenizer.tokenize("3people") == ["3</w>", "people</w>"]
    assert tokenizer.tokenize("fhml") == ["fh", "ml</w>"]


def test_saved_folder_has_vocab_and_merges_and_reloads():
    tokenizer = load_clip_tokenizer()
    with tempfile.TemporaryDirectory() as folder:
        save_tokenizer(tokenizer, Path(folder))
        assert (Path(folder) / "vocab.json").is_file() and (Path(folder) / "merges.txt").is_file()
        reloaded = CLIPTokenizer(
            vocab=str(Path(folder) / "vocab.json"), merges=str(Path(folder) / "merges.txt")
        )
        assert len(reloaded) == 49408
        assert reloaded(CAPTIONS[0]).input_ids == tokenizer(CAPTIONS[0]).input_ids
