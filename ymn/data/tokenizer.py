"""The CLIP BPE tokenizer of Stable Diffusion 1.x, built offline from the `openai-clip` package.

The package ships `bpe_simple_vocab_16e6.txt.gz`; we read it without importing `clip` (its
`__init__` imports torchvision, which we do not install) and build the same vocabulary as
OpenAI's `SimpleTokenizer`, so token ids equal CLIP's.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import weakref
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

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


LONG_CAPTION_ATTR = "ymn_max_token_length"  # set on the tokenizer object: survives pickling


def set_max_token_length(tokenizer: Any, max_token_length: int) -> None:
    """`model.max_token_length`: 77 (CLIP's window, the recipe) or 150 / 225 / ... (kohya): the
    caption's first `max_token_length` tokens are kept and encoded in 75-token chunks."""
    window = int(tokenizer.model_max_length)
    if max_token_length == window:
        tokenizer.__dict__.pop(LONG_CAPTION_ATTR, None)
        return
    if max_token_length < 2 * (window - 2) or max_token_length % (window - 2):
        raise ValueError(
            f"model.max_token_length={max_token_length}: use {window} (one CLIP window) or a "
            f"multiple of {window - 2} from {2 * (window - 2)} on (kohya: 150 or 225)"
        )
    setattr(tokenizer, LONG_CAPTION_ATTR, int(max_token_length))


def token_limit(tokenizer: Any) -> int:
    """Token ids a caption keeps, BOS and EOS included: 77, or max_token_length + 2."""
    long = getattr(tokenizer, LONG_CAPTION_ATTR, None)
    return int(long) + 2 if long else int(getattr(tokenizer, "model_max_length", 77))


def tokenize(tokenizer: Any, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's max length (77 for CLIP), (batch, length).

    Exactly `tokenizer(captions, padding="max_length", truncation=True, ...).input_ids`; for a
    CLIP tokenizer the ids are assembled from cached per-word ids (`WordTokenCache`), which
    takes about a sixth of the time of the batch call. Other tokenizers get the batch call.
    With `set_max_token_length` > 77 the ids are kohya's chunks side by side, (batch, n * 77):
    see `chunk_ids`.
    """
    limit = token_limit(tokenizer)
    cache = _word_cache(tokenizer)
    if cache is not None and all(map(cacheable_caption, captions)):
        ids = cache.ids(captions, limit)
    else:
        ids = _tokenize_call(tokenizer, list(captions), limit)
    window = int(getattr(tokenizer, "model_max_length", 77))
    if limit <= window:
        return ids
    return chunk_ids(ids, window, tokenizer.eos_token_id, tokenizer.pad_token_id)


def chunk_ids(ids: torch.Tensor, window: int, eos: int, pad: int) -> torch.Tensor:
    """(B, n * (window - 2) + 2) ids → (B, n * window): kohya's chunks, each BOS + the next
    window - 2 tokens + the sequence's last token (EOS, or pad). With pad == eos (SD 1.x) a
    padding chunk is BOS EOS ... EOS; otherwise (kohya's v2 rules) a chunk cut inside the text
    ends in EOS and an empty chunk starts BOS EOS pad ...."""
    step = window - 2
    chunks = []
    for start in range(1, ids.shape[1] - 1, step):
        chunk = torch.cat([ids[:, :1], ids[:, start : start + step], ids[:, -1:]], dim=1)
        if pad != eos:
            cut = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[cut, -1] = eos
            chunk[chunk[:, 1] == pad, 1] = eos
        chunks.append(chunk)
    return torch.cat(chunks, dim=1)


def merge_chunks(hidden: torch.Tensor, batch: int, window: int) -> torch.Tensor:
    """(B * n, window, D) hidden states of the chunks → (B, n * (window - 2) + 2, D): the first
    chunk's BOS, every chunk without its BOS and EOS, the last chunk's EOS (kohya, SD 1.x)."""
    states = hidden.reshape(batch, -1, window, hidden.shape[-1])
    inner = states[:, :, 1:-1].reshape(batch, -1, hidden.shape[-1])
    return torch.cat([states[:, 0, :1], inner, states[:, -1, -1:]], dim=1)


def _tokenize_call(tokenizer: Any, captions: list[str], length: int) -> torch.Tensor:
    """The plain batch call. Only ids are asked for: the attention mask of fixed-length padding
    is unused, and building it cost about a third of the call."""
    out = tokenizer(
        captions,
        padding="max_length",
        max_length=length,
        truncation=True,
        return_attention_mask=False,
        return_tensors="pt",
    )
    return out.input_ids


def cacheable_caption(caption: str) -> bool:
    """Printable ASCII without special-token markup: the only whitespace is " ", NFC and
    lowercasing act per character, so CLIP's tokens never span two space-separated words."""
    return caption.isascii() and caption.isprintable() and "<|" not in caption


_PROBES = ("", " ", "1person, AobaKokona, fhmd fvmd", "Two  words,(x) y'll 3rd  ", "tag " * 90)


class WordTokenCache:
    """CLIP token ids of captions from per-word ids: [bos] + ids of each space-separated word,
    cut to `length - 1`, + [eos], padded with pad (what truncation="longest_first" and
    padding="max_length" give for one sequence). Words missing from the cache are tokenized by
    the tokenizer itself, one batch call per batch. Use `WordTokenCache.build` (None when the
    tokenizer is not a plain CLIP one or does not reproduce its own ids on probe captions)."""

    def __init__(self, tokenizer: Any, max_words: int = 50_000) -> None:
        self.tokenizer, self.max_words = tokenizer, max_words
        self.length = int(tokenizer.model_max_length)
        self.bos, self.eos, self.pad = (
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
        self.vocab_size = len(tokenizer)
        self.words: dict[str, list[int]] = {}

    @classmethod
    def build(cls, tokenizer: Any) -> WordTokenCache | None:
        """A cache for `tokenizer`, or None where the per-word assembly would not be exact."""
        plain_clip = (
            type(tokenizer).__name__.startswith("CLIPTokenizer")
            and getattr(tokenizer, "backend_tokenizer", None) is not None
            and getattr(tokenizer, "padding_side", "right") == "right"
            and getattr(tokenizer, "truncation_side", "right") == "right"
            and set(tokenizer.get_added_vocab()) <= set(tokenizer.all_special_tokens)
        )
        if not plain_clip or None in (tokenizer.bos_token_id, tokenizer.pad_token_id):
            return None
        cache = cls(tokenizer)
        probes = list(_PROBES)
        same = torch.equal(cache.ids(probes), _tokenize_call(tokenizer, probes, cache.length))
        return cache if same else None

    def ids(self, captions: Sequence[str], length: int | None = None) -> torch.Tensor:
        """(len(captions), length) int64 ids (default length: the tokenizer's max length);
        every caption must pass `cacheable_caption`."""
        length = length or self.length
        split = [caption.split() for caption in captions]
        self._learn({w for words in split for w in words if w not in self.words})
        rows = []
        for words in split:
            row = [self.bos]
            for word in words:
                row += self.words[word]
            del row[length - 1 :]
            row.append(self.eos)
            row += [self.pad] * (length - len(row))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long).view(len(rows), length)

    def _learn(self, missing: set[str]) -> None:
        if not missing:
            return
        if len(self.words) + len(missing) > self.max_words:
            self.words.clear()  # a bound on memory for free text; tags repeat, so rarely hit
        new = sorted(missing)
        ids = self.tokenizer(new, add_special_tokens=False, return_attention_mask=False)
        self.words.update(zip(new, ids["input_ids"], strict=True))


_WORD_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _word_cache(tokenizer: Any) -> WordTokenCache | None:
    """The tokenizer's WordTokenCache (built once per process; rebuilt when tokens are added)."""
    try:
        cache = _WORD_CACHES.get(tokenizer, False)
    except TypeError:  # not weak-referenceable or unhashable: no cache
        return None
    if cache is False or (cache is not None and cache.vocab_size != len(tokenizer)):
        cache = _WORD_CACHES[tokenizer] = WordTokenCache.build(tokenizer)
    return cache


def describe_tokens(
    tokenizer: CLIPTokenizer, texts: tuple[str, ...] = CONTROL_TOKEN_EXAMPLES
) -> str:
    """One line per text: how the tokenizer splits it (logged at start-up)."""
    rows = []
    for text in texts:
        pieces = tokenizer.tokenize(text)
        rows.append(f"{text!r} -> {pieces}")
    return "\n".join(rows)


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def save_tokenizer(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """The tokenizer folder of the reference SD 1.x checkpoints: vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json. CLIPTokenizer and CLIPTokenizerFast load it
    in transformers 4.x and 5.x; a tokenizer.json is not written (tokenizers' JSON from newer
    releases need not parse in the older ones that transformers 4.x pins)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {key: str(getattr(tokenizer, key)) for key in SPECIAL_TOKEN_KEYS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": int(tokenizer.model_max_length),
        **special,
        "added_tokens_decoder": _added_tokens(tokenizer),  # e.g. ymn's control tokens
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _added_tokens(tokenizer: CLIPTokenizer) -> dict[str, dict[str, Any]]:
    """Added tokens (special ones included) in the tokenizer_config.json form both majors read."""
    fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {
        str(index): {name: getattr(token, name) for name in fields}
        for index, token in sorted(tokenizer.added_tokens_decoder.items())
    }


def token_spans(tokenizer: Any, prompt: str, phrase: str) -> list[list[int]]:
    """Positions (in the encoded prompt, BOS = 0) of each occurrence of phrase's BPE pieces."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    pieces = tokenizer(phrase, add_special_tokens=False).input_ids
    if not pieces:
        return []
    n = len(pieces)
    return [list(range(i, i + n)) for i in range(len(ids) - n + 1) if ids[i : i + n] == pieces]


def token_indices(tokenizer: Any, prompt: str, phrase: str) -> list[int]:
    """All BPE-piece positions of every occurrence of `phrase` in `prompt` (sorted, unique)."""
    return sorted({i for span in token_spans(tokenizer, prompt, phrase) for i in span})
