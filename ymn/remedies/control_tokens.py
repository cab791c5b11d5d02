"""Dedicated control tokens: one tokenizer entry per count and per face-grid axis position.

CLIP's BPE splits ASP's control strings into common pieces (`3people` → `3` + `people`,
`fhml` → `fh` + `ml`), so the model must learn counts and positions from pieces shared with
ordinary text. This remedy adds 16 whole-word tokens, each a new row of the text encoder's
embedding matrix (the tokenizer and the matrix grow together), initialised from related text
and then trained with the rest of the text encoder:

- counts: `1person` … `5people`, `manypeople` (`0people` is not a target: no faces to count);
- grid: the 10 axis tokens `fhll … fhri` and `fvtp … fvbt` rather than 25 combined cell
  tokens: captions keep ASP's "fhXX fvYY" form unchanged (no caption or probe change), and each
  axis token is shared by five cells, so it gets five times the training signal.

init: "pieces" (default) sets each new row to the mean of the rows of the BPE pieces the string
had before (the model's starting point is unchanged on average); "words" uses plain words
(`three people`, `far left`, `top`).

Persistence: a diffusers folder keeps the added tokens in `tokenizer/tokenizer.json` and the
grown matrix in the text encoder. A single file carries the grown matrix (and its config) but no
tokenizer; `restore_control_tokens` re-adds the tokens, in their fixed order, to the stock CLIP
tokenizer when the matrix has exactly `len(CONTROL_TOKENS)` extra rows.
`load_with_control_tokens` (the `model.components._target_` of the remedy) does both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tokenizers import AddedToken

from ymn.data.captions import GRID_TOKENS, MAX_COUNT, count_token
from ymn.model.components import Components, load_components

log = logging.getLogger(__name__)

COUNT_TOKENS: tuple[str, ...] = tuple(count_token(n) for n in range(1, MAX_COUNT + 1)) + (
    count_token("many"),
)
GRID_AXIS_TOKENS: tuple[str, ...] = GRID_TOKENS["asp5"][0] + GRID_TOKENS["asp5"][1]
CONTROL_TOKENS: tuple[str, ...] = COUNT_TOKENS + GRID_AXIS_TOKENS
WORD_INIT: dict[str, str] = {
    "1person": "one person",
    "2people": "two people",
    "3people": "three people",
    "4people": "four people",
    "5people": "five people",
    "manypeople": "many people",
    "fhll": "far left",
    "fhml": "left",
    "fhmd": "center",
    "fhmr": "right",
    "fhri": "far right",
    "fvtp": "top",
    "fvmt": "upper",
    "fvmd": "middle",
    "fvmb": "lower",
    "fvbt": "bottom",
}
INITS = ("pieces", "words")


def _embedding(components: Components) -> torch.nn.Embedding:
    return components.text_encoder.get_input_embeddings()


def _init_ids(tokenizer: object, token: str, init: str) -> list[int]:
    """Token ids whose embeddings initialise `token` (before it is added)."""
    text = WORD_INIT.get(token, token) if init == "words" else token
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"control token {token!r}: {text!r} encodes to no tokens")
    return ids


def add_control_tokens(
    components: Components, tokens: Sequence[str] = CONTROL_TOKENS, init: str = "pieces"
) -> list[str]:
    """Add `tokens` (whole words, case-insensitive) to tokenizer + embeddings; returns new ones.

    Tokens already in the tokenizer keep their (possibly trained) rows, so the call is
    idempotent and safe on a model that already has them.
    """
    if init not in INITS:
        raise ValueError(f"control token init must be one of {INITS}, got {init!r}")
    tokenizer = components.tokenizer
    present = set(tokenizer.get_added_vocab())
    new = [t for t in tokens if t not in present]
    if not new:
        return []
    sources = {t: _init_ids(tokenizer, t, init) for t in new}
    tokenizer.add_tokens([AddedToken(t, single_word=True, normalized=True) for t in new])
    components.text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = _embedding(components).weight
    with torch.no_grad():
        for token, ids in sources.items():
            weight[tokenizer.convert_tokens_to_ids(token)] = weight[ids].mean(dim=0)
    log.info("Added %d control tokens (init=%s): %s", len(new), init, " ".join(new))
    return new


def restore_control_tokens(components: Components) -> list[str]:
    """Re-add the control tokens to a tokenizer that lost them (a single file's stock one).

    Does nothing when the embedding matrix has no extra rows; raises when the extra rows do not
    match CONTROL_TOKENS (the tokens cannot be named then: load the diffusers folder instead).
    """
    tokenizer = components.tokenizer
    rows = _embedding(components).weight.shape[0]
    extra = rows - len(tokenizer)
    if extra <= 0:
        return []
    missing = [t for t in CONTROL_TOKENS if t not in tokenizer.get_added_vocab()]
    if extra != len(missing):
        raise ValueError(
            f"The text encoder has {rows} embedding rows but the tokenizer {len(tokenizer)} "
            f"tokens; {extra} extra rows do not match ymn's {len(missing)} missing control "
            "tokens. Load the model's diffusers folder (its tokenizer/ names the added tokens)."
        )
    tokenizer.add_tokens([AddedToken(t, single_word=True, normalized=True) for t in missing])
    log.info("Restored %d control tokens from the embedding matrix", len(missing))
    return missing


def load_with_control_tokens(
    name: str = "tiny",
    pretrained: str | None = None,
    allow_pickle: bool = False,
    prediction_type: str | None = None,
    control_tokens: bool = True,
    init: str = "pieces",
) -> Components:
    """`load_components`, then restore saved control tokens and (if asked) add missing ones."""
    components = load_components(name, pretrained, allow_pickle, prediction_type)
    restore_control_tokens(components)
    if control_tokens:
        add_control_tokens(components, CONTROL_TOKENS, init)
    return components
