"""Cross-attention localization loss (FastComposer-style), an auxiliary training loss.

For each character-name token and each face-grid token pair of a training caption (all their
BPE pieces), the loss penalises the cross-attention mass that falls outside the region the token
names: the character's face box (optionally enlarged) or the face's grid cell. Face boxes come
from the batch metadata, which already follows each sample's crop and flip.

The loss registers a capture with grad on the selected attn2 layers with the UNet's attention
hooks (`ymn.model.attention_hooks`): softmax(QKᵀ) is materialised there only during training
forwards (grad enabled, UNet in train mode); every layer's output, and every other call, stays
with the layer's kernel (the fast SDPA kernel by default).

Config (`loss.attn_localization`, see conf/loss/attn_localization.yaml): weight (λ), layers
(substrings of attn2 processor names; null = the two finest levels at most 32x32, e.g. 32 and
16 for SD 1.5 at 512 px, 16 and 8 for the tiny model at 128 px), enlarge, mode, grid.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ymn.data.batch import Batch
from ymn.data.captions import GRID_TOKENS, UNKNOWN_CHARACTERS, grid_cell
from ymn.data.tokenizer import token_indices
from ymn.model.attention_hooks import (
    Capture,
    attention_hooks,
    cross_attention_layers,
    layer_shape,
)
from ymn.model.components import vae_downsampling

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
MODES = ("mass_outside", "balanced")


@dataclass(frozen=True)
class TokenRegion:
    """Token positions of one sample's caption and the box [l, t, r, b] (fractions) they name."""

    sample: int
    positions: tuple[int, ...]
    box: Box


# ----------------------------------------------------------------------------- pure parts


def enlarge_box(box: Sequence[float], enlarge: float) -> Box:
    """Scale a box about its centre by (1 + enlarge) per side length, clipped to [0, 1]."""
    left, top, right, bottom = (float(v) for v in box)
    dx, dy = (right - left) * enlarge / 2, (bottom - top) * enlarge / 2
    return (max(0.0, left - dx), max(0.0, top - dy), min(1.0, right + dx), min(1.0, bottom + dy))


def cell_box(cell: tuple[int, int], grid: int) -> Box:
    """The box of grid cell (col, row)."""
    col, row = cell
    return (col / grid, row / grid, (col + 1) / grid, (row + 1) / grid)


def _overlap(length: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    """Per position of a `length`-cell axis: the covered fraction of it by [lo, hi]."""
    edges = torch.arange(length + 1, device=device, dtype=torch.float32) / length
    covered = edges[1:].clamp(max=hi) - edges[:-1].clamp(min=lo)
    return (covered.clamp(min=0) * length).clamp(max=1)


def region_mask(box: Sequence[float], height: int, width: int, device: Any = "cpu") -> torch.Tensor:
    """[height, width] soft mask: the share of each attention position's area inside box."""
    left, top, right, bottom = (float(v) for v in box)
    rows = _overlap(height, top, bottom, torch.device(device))
    cols = _overlap(width, left, right, torch.device(device))
    return rows[:, None] * cols[None, :]


def localization_terms(
    maps: torch.Tensor, masks: torch.Tensor, mode: str = "mass_outside"
) -> torch.Tensor:
    """Per region, how much a token's attention map [N, h, w] leaks out of its mask [N, h, w].

    mass_outside: share of the map's mass outside the mask, in [0, 1]; 0 when it sits entirely
    inside. balanced (FastComposer): mean attention outside minus mean attention inside, lowest
    when it sits inside; also rewards attending the region more strongly.
    """
    if mode not in MODES:
        raise ValueError(f"loss.attn_localization.mode must be one of {MODES}, got {mode!r}")
    maps = maps.float()
    inside = (maps * masks).flatten(1).sum(dim=1)
    outside = (maps * (1 - masks)).flatten(1).sum(dim=1)
    if mode == "mass_outside":
        return outside / (inside + outside).clamp(min=1e-8)
    area_in = masks.flatten(1).sum(dim=1).clamp(min=1e-8)
    area_out = (1 - masks).flatten(1).sum(dim=1).clamp(min=1e-8)
    return outside / area_out - inside / area_in


def _pair_phrases(meta: Mapping[str, Any], grid: str) -> list[tuple[str, tuple[int, int]]]:
    """(grid phrase "{h} {v}", cell) of each face, in face order (as the caption writes them)."""
    horizontal, vertical = GRID_TOKENS[grid]
    out = []
    for box in meta.get("facepos") or []:
        col, row = grid_cell(box, len(horizontal))
        out.append((f"{horizontal[col]} {vertical[row]}", (col, row)))
    return out


def sample_regions(
    tokenizer: Any,
    index: int,
    caption: str,
    meta: Mapping[str, Any],
    *,
    grid: str = "asp5",
    enlarge: float = 0.0,
    characters: bool = True,
    grid_tokens: bool = True,
) -> list[TokenRegion]:
    """The token regions of one sample: character names → face boxes, grid pairs → cells.

    Characters are matched to faces by index (metadata lists one character per face); a name
    on several faces names the bounding box of their boxes. A caption without a name or pair
    (dropped, or cut at 77 tokens) simply has no region for it.
    """
    boxes = [tuple(float(v) for v in b) for b in meta.get("facepos") or []]
    regions: list[TokenRegion] = []
    names = list(meta.get("characters") or [])
    if characters and names and len(names) == len(boxes):
        for name in sorted(set(names) - set(UNKNOWN_CHARACTERS)):
            positions = token_indices(tokenizer, caption, name.replace("_", " "))
            if not positions:
                continue
            own = [b for n, b in zip(names, boxes, strict=True) if n == name]
            union = _union([enlarge_box(b, enlarge) for b in own])
            regions.append(TokenRegion(index, tuple(positions), union))
    if grid_tokens and boxes:
        size = len(GRID_TOKENS[grid][0])
        for phrase, cell in dict(_pair_phrases(meta, grid)).items():
            positions = token_indices(tokenizer, caption, phrase)
            if positions:
                regions.append(TokenRegion(index, tuple(positions), cell_box(cell, size)))
    return regions


def _union(boxes: Sequence[Box]) -> Box:
    """The bounding box of several boxes (a name on several faces)."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def layer_terms(
    probs: torch.Tensor,
    regions: Sequence[TokenRegion],
    latent_hw: tuple[int, int],
    mode: str = "mass_outside",
) -> torch.Tensor:
    """Leak per region for one layer's head-averaged probabilities [B, Q, T] → [len(regions)]."""
    height, width = layer_shape(probs.shape[1], latent_hw)
    maps, masks = [], []
    for region in regions:
        token_map = probs[region.sample][:, list(region.positions)].sum(dim=-1)
        maps.append(token_map.view(height, width))
        masks.append(region_mask(region.box, height, width, probs.device))
    return localization_terms(torch.stack(maps), torch.stack(masks), mode)


# ----------------------------------------------------------------------------- UNet layers


def layer_side(name: str, sample_size: int, n_levels: int) -> int:
    """The attention map side of an attn2 layer from its block name (ceil halving per level)."""
    match = re.match(r"(down_blocks|up_blocks)\.(\d+)\.", name)
    if match is None:
        level = n_levels - 1  # mid_block
    elif match.group(1) == "down_blocks":
        level = int(match.group(2))
    else:
        level = n_levels - 1 - int(match.group(2))
    side = sample_size
    for _ in range(level):
        side = (side + 1) // 2
    return side


def default_layers(unet: Any, max_side: int = 32, levels: int = 2) -> list[str]:
    """attn2 processor names of the `levels` finest map sizes no larger than max_side."""
    names = cross_attention_layers(unet)
    n_levels = len(unet.config.block_out_channels)
    sides = {n: layer_side(n, int(unet.config.sample_size), n_levels) for n in names}
    kept = sorted({s for s in sides.values() if s <= max_side}, reverse=True)[:levels]
    if not kept:
        raise ValueError(f"no cross-attention layer has maps of side <= {max_side}: {sides}")
    return [n for n in names if sides[n] in kept]


# ----------------------------------------------------------------------------- the loss


@dataclass(eq=False)
class AttnLocalizationLoss:
    """λ · mean leak of every (token, region) pair over the selected layers; see module doc."""

    weight: float = 0.01
    layers: Sequence[str] | None = None
    enlarge: float = 0.0
    mode: str = "mass_outside"
    grid: str = "asp5"
    characters: bool = True
    grid_tokens: bool = True
    max_side: int = 32
    levels: int = 2
    store: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    capture: Capture | None = field(default=None, init=False, repr=False)
    module: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"loss.attn_localization.mode must be one of {MODES}, got {self.mode!r}"
            )
        if self.grid not in GRID_TOKENS:
            raise ValueError(f"loss.attn_localization.grid must be one of {sorted(GRID_TOKENS)}")
        self.weight = float(self.weight)
        self.layers = list(self.layers) if self.layers else None
        self.enlarge = float(self.enlarge)

    def attach(self, module: Any) -> None:
        """Capture (with grad) the selected attn2 layers of module.unet."""
        self.module = module
        unet = module.unet
        names = (
            cross_attention_layers(unet, self.layers)
            if self.layers
            else default_layers(unet, self.max_side, self.levels)
        )
        self.capture = attention_hooks(unet).register(names, self.store.__setitem__, grad=True)
        log.info("attn_localization on %d layers: %s", len(names), names)

    def regions(self, batch: Batch) -> list[TokenRegion]:
        """The (token, region) pairs of a batch, from its captions and metadata."""
        metas = batch.get("meta") or []
        captions = batch.get("captions") or []
        tokenizer = self.module.tokenizer
        out: list[TokenRegion] = []
        for i, (caption, meta) in enumerate(zip(captions, metas, strict=False)):
            out += sample_regions(
                tokenizer,
                i,
                caption,
                meta,
                grid=self.grid,
                enlarge=self.enlarge,
                characters=self.characters,
                grid_tokens=self.grid_tokens,
            )
        return out

    def latent_hw(self, batch: Batch) -> tuple[int, int]:
        if "latents" in batch:
            return int(batch["latents"].shape[-2]), int(batch["latents"].shape[-1])
        factor = vae_downsampling(self.module.vae)
        height, width = batch["pixel_values"].shape[-2:]
        return int(height) // factor, int(width) // factor

    def __call__(self, batch: Batch) -> torch.Tensor:
        """λ · mean leak over regions and layers of the last training forward (0 if none)."""
        maps = dict(self.store)
        self.store.clear()
        regions = self.regions(batch)
        device = self.module.device
        if not regions or not maps:
            return torch.zeros((), device=device)
        latent_hw = self.latent_hw(batch)
        terms = [layer_terms(p, regions, latent_hw, self.mode) for p in maps.values()]
        return self.weight * torch.cat(terms).mean()
