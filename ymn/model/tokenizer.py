"""The CLIP BPE tokenizer of Stable Diffusion 1.x, built offline from the `openai-clip` package.

The package ships `bpe_simple_vocab_16e6.txt.gz`; we read it without importing `clip` (its
`__init__` imports torchvision, which we do not install) and build the same vocabulary as
OpenAI's `SimpleTokenizer`, so token ids equal CLIP's.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import cache
from pathlib import Path

import torch
from transformers import CLIPTokenizer

N_MERGES = 49152 - 256 - 2
MODEL_MAX_LENGTH = 77
CONTROL_TOKEN_EXAMPLES = ("1person", "3people", "manypeople", "fhml fvmd", "fhll fvtp")


def clip_bpe_path() -> Path:
    """Locate `bpe_simple_vocab_16e6.txt.gz` inside the installed `openai-clip` package."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The `openai-clip` package is not installed; it ships CLIP's BPE vocabulary. "
            "Run `pip install openai-clip==1.0.1`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall `openai-clip`.")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


@cache
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token → id) and merges exactly as OpenAI's SimpleTokenizer builds them."""
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def load_clip_tokenizer() -> CLIPTokenizer:
    """SD 1.x's CLIP tokenizer (vocab 49,408, max length 77), offline; a fresh object per call."""
    vocab, merges = _vocab_and_merges()
    # transformers 5: vocab_file=/merges_file= silently builds a 3-token vocab; pass the objects.
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MODEL_MAX_LENGTH)


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Pad/truncate captions to the tokenizer's max length, as SD's training scripts do."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def describe_tokens(
    tokenizer: CLIPTokenizer, texts: tuple[str, ...] = CONTROL_TOKEN_EXAMPLES
) -> str:
    """One line per text: how the tokenizer splits it (logged at start-up)."""
    rows = []
    for text in texts:
        pieces = tokenizer.tokenize(text)
        rows.append(f"{text!r} -> {pieces}")
    return "\n".join(rows)


def save_tokenizer(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Save as transformers does, plus the `vocab.json`/`merges.txt` pair older loaders expect."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
