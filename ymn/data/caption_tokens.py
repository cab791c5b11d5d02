"""Caption length in CLIP tokens and where the text encoder's cut falls (`ymn-caption`, preflight).

`limit` is the number of token ids the model reads, BOS and EOS included: the tokenizer's
`model_max_length` (77), or `max_token_length + 2` when the model encodes long captions in
75-token chunks (`ymn.data.tokenizer.token_limit`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

CUT_MARK = " <|cut|> "


def token_counts(tokenizer: Any, captions: Sequence[str]) -> list[int]:
    """CLIP tokens of each caption before truncation, start and end tokens included."""
    if not captions:
        return []
    ids = tokenizer(list(captions), truncation=False, verbose=False)["input_ids"]
    return [len(row) for row in ids]


def cut_position(tokenizer: Any, caption: str, limit: int | None = None) -> int | None:
    """Where CLIP's cut falls in `caption`: the end of the last word it keeps whole (a word
    split by the cut counts as lost), or None when the caption fits in `limit` tokens
    (default: the tokenizer's `model_max_length`)."""
    limit = int(limit or tokenizer.model_max_length)
    if token_counts(tokenizer, [caption])[0] <= limit:
        return None
    ends = [m.end() for m in re.finditer(r"\w+|[^\w\s]+", caption)]
    low, high = 0, len(ends)  # ends[:low] all fit; binary search (counts grow word by word)
    while low < high:
        mid = (low + high + 1) // 2
        if token_counts(tokenizer, [caption[: ends[mid - 1]]])[0] <= limit:
            low = mid
        else:
            high = mid - 1
    return ends[low - 1] if low else 0


def mark_cut(tokenizer: Any, caption: str, limit: int | None = None) -> tuple[str, int]:
    """(caption with `CUT_MARK` where the cut at `limit` tokens falls, its token count)."""
    limit = int(limit or tokenizer.model_max_length)
    n_tokens = token_counts(tokenizer, [caption])[0]
    cut = cut_position(tokenizer, caption, limit) if n_tokens > limit else None
    if cut is None:
        return caption, n_tokens
    return caption[:cut] + CUT_MARK + caption[cut:].lstrip(), n_tokens
