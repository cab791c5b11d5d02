"""Cross-attention probe: where do the count and face-grid tokens look?

During a probe pass a capture without grad, registered with the UNet's attention hooks
(`ymn.model.attention_hooks`), keeps a running mean of the head-averaged cross-attention (attn2)
probabilities per layer; the layers' kernel still computes their output, so sampling is
unchanged. Maps are pooled to the caption grid (mean per cell, so a uniform map puts exactly
1/grid² in each cell), averaged over layers, and each control token's map is the sum over all
its BPE pieces.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ymn.data.captions import GRID_TOKENS, count_token
from ymn.data.tokenizer import token_indices
from ymn.model.attention_hooks import attention_hooks, cross_attention_layers, layer_shape

Cell = tuple[int, int]


class AttentionStore:
    """Running mean over calls of head-averaged attention probabilities, per layer [B, Q, T]."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, probs: torch.Tensor) -> None:
        """Add one call's head-averaged probabilities, [B, Q, T]."""
        mean = probs.detach().float()
        if name in self.sums and self.sums[name].shape != mean.shape:
            raise RuntimeError(
                f"attention layer {name}: shape changed from {tuple(self.sums[name].shape)} to "
                f"{tuple(mean.shape)} without store.reset() between passes"
            )
        self.sums[name] = self.sums[name] + mean if name in self.sums else mean
        self.calls[name] = self.calls.get(name, 0) + 1

    def reset(self) -> None:
        self.sums.clear()
        self.calls.clear()

    def maps(self) -> dict[str, torch.Tensor]:
        """Per layer: the mean over recorded calls (timesteps), [B, Q, T]."""
        return {name: total / self.calls[name] for name, total in self.sums.items()}


@contextmanager
def capture_cross_attention(
    unet: Any, layers: Sequence[str] | None = None
) -> Iterator[AttentionStore]:
    """Record cross-attention maps of the selected attn2 layers inside the `with` block.

    layers: substrings of processor names, e.g. ["mid_block", "up_blocks.1"]; None = all.
    A capture without grad registered with the UNet's attention hooks; it leaves on exit, also
    after an error.
    """
    store = AttentionStore()

    def keep(name: str, probs: torch.Tensor) -> None:
        store.add(name.removesuffix(".processor"), probs)

    with attention_hooks(unet).capturing(cross_attention_layers(unet, layers), keep):
        yield store


# ----------------------------------------------------------------------------- pooling


def _cell_means(length: int, grid: int, device: torch.device) -> torch.Tensor:
    """[grid, length] averaging weights: each cell's overlap with each position, rows sum to 1.

    Works both ways: finer layers average several positions, coarser ones (a 2x2 mid block)
    spread each position over the cells it covers.
    """
    cells = torch.arange(grid, device=device, dtype=torch.float64)[:, None]
    positions = torch.arange(length, device=device, dtype=torch.float64)[None, :]
    lo = torch.maximum(cells / grid, positions / length)
    hi = torch.minimum((cells + 1) / grid, (positions + 1) / length)
    return ((hi - lo).clamp(min=0) * grid).float()


def pool_to_grid(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, h, w, T] → [B, grid, grid, T], the area-weighted mean of each cell."""
    rows = _cell_means(maps.shape[1], grid, maps.device)
    cols = _cell_means(maps.shape[2], grid, maps.device)
    return torch.einsum("rh,bhwt,cw->brct", rows, maps, cols)


def grid_token_maps(
    layer_maps: dict[str, torch.Tensor], latent_hw: tuple[int, int], grid: int
) -> torch.Tensor:
    """Average over layers of each layer's map pooled to the grid: [B, grid, grid, T]."""
    if not layer_maps:
        raise ValueError("no attention maps were recorded (did the UNet run inside the capture?)")
    pooled = []
    for probs in layer_maps.values():
        h, w = layer_shape(probs.shape[1], latent_hw)
        pooled.append(pool_to_grid(probs.reshape(probs.shape[0], h, w, -1), grid))
    return torch.stack(pooled).mean(dim=0)


# ----------------------------------------------------------------------------- tokens


# ----------------------------------------------------------------------------- metrics


def normalized(spatial: np.ndarray) -> np.ndarray:
    """A non-negative map scaled to sum 1 (uniform if it sums to 0)."""
    total = spatial.sum()
    return spatial / total if total > 0 else np.full_like(spatial, 1.0 / spatial.size)


def mass_in_cell(spatial: np.ndarray, cell: Cell) -> float:
    """Share of a [rows, cols] map's mass inside cell (col, row)."""
    return float(normalized(spatial)[cell[1], cell[0]])


def argmax_cell(spatial: np.ndarray) -> Cell:
    """(col, row) of the largest cell of a [rows, cols] map."""
    row, col = np.unravel_index(int(np.argmax(spatial)), spatial.shape)
    return int(col), int(row)


def normalized_entropy(spatial: np.ndarray) -> float:
    """Entropy of the normalised map divided by log(number of cells): 1 = uniform."""
    p = normalized(spatial).ravel()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(spatial.size)) if spatial.size > 1 else 0.0


def image_attention_record(
    maps: np.ndarray,
    tokenizer: Any,
    prompt: str,
    count: int | str | None,
    cells: Sequence[Cell],
    caption: Any,
) -> dict[str, Any]:
    """Attention metrics of one image from its pooled maps [grid, grid, T].

    count: the requested count (`count_entropy` over its token's pieces); cells: target cells;
    each distinct cell's phrase ("{h} {v}" in the caption's grid tokens) is scored.
    """
    record: dict[str, Any] = {"count_entropy": None, "faces": []}
    if count is not None:
        label = "many" if count == "many" or (isinstance(count, int) and count > 5) else count
        idx = token_indices(tokenizer, prompt, count_token(label, caption.count_spelling))
        if idx:
            record["count_entropy"] = normalized_entropy(maps[:, :, idx].sum(axis=-1))
    horizontal, vertical = GRID_TOKENS[caption.grid]
    for col, row in sorted({(int(c), int(r)) for c, r in cells}):
        idx = token_indices(tokenizer, prompt, f"{horizontal[col]} {vertical[row]}")
        if not idx:
            continue
        spatial = maps[:, :, idx].sum(axis=-1)
        record["faces"].append(
            {
                "cell": [col, row],
                "mass": mass_in_cell(spatial, (col, row)),
                "argmax": list(argmax_cell(spatial)),
            }
        )
    return record


def summarize_attention(records: Sequence[dict[str, Any]], prefix: str) -> dict[str, float]:
    """Flat metrics over image records: grid_mass_in_target, grid_argmax_acc, count_entropy."""
    faces = [f for r in records for f in r["faces"]]
    entropies = [r["count_entropy"] for r in records if r["count_entropy"] is not None]
    metrics: dict[str, float] = {}
    if faces:
        metrics[f"{prefix}/grid_mass_in_target"] = float(np.mean([f["mass"] for f in faces]))
        hits = [f["argmax"] == f["cell"] for f in faces]
        metrics[f"{prefix}/grid_argmax_acc"] = float(np.mean(hits))
    if entropies:
        metrics[f"{prefix}/count_entropy"] = float(np.mean(entropies))
    return metrics
