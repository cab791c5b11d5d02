"""What a sample source is: the `StreamConfig` it serves, the `Example` it renders, and the
`SampleSource` protocol the one draw → bucket → batch loop (`ymn.data.stream`) reads through.

Sources: the packed shards' pixels (`ymn.data.pixels.PixelSource`) and a latent cache
(`ymn.data.latent_source.LatentSource`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import torch

from ymn.data.buckets import bucket_table
from ymn.data.captions import CaptionConfig, caption_config
from ymn.data.decode import Sample, SkipCounter


@dataclass
class StreamConfig:
    """What decides a stream's batches, whichever the sample source (the `data` config keys of
    the same names): bucket resolution, batch size, multiply mode (ed1 | ed2), crop (ed1 |
    center | random), flip probability, shuffle buffer, held-out fraction, seed and captions."""

    resolution: int
    batch_size: int
    multiply_mode: str = "ed1"
    crop: str = "ed1"
    flip_p: float = 0.0
    shuffle_buffer: int = 1000
    val_fraction: float = 0.02
    seed: int = 0
    caption: CaptionConfig = field(default_factory=CaptionConfig)  # a mapping or None: made one

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: use at least 1")
        self.caption = caption_config(self.caption)

    @property
    def buckets(self) -> tuple[tuple[int, int], ...]:
        """The aspect buckets (w, h) of `resolution`."""
        return _buckets(self.resolution)


@lru_cache(maxsize=16)
def _buckets(resolution: int) -> tuple[tuple[int, int], ...]:
    return tuple(bucket_table(resolution))


@dataclass
class Example:
    """One rendered copy: bucket, tensor (pixels (3, H, W) or latents (4, h, w)), caption,
    transformed metadata."""

    key: str
    bucket: tuple[int, int]
    tensor: torch.Tensor
    caption: str
    meta: dict[str, Any]


class SampleSource(Protocol):
    """Where a stream's samples come from and how one drawn copy becomes an `Example`."""

    seed_name: str  # names the per-pass seeds ("stream": pixels, "latents": the cache)
    batch_key: str  # the batch's tensor key: "pixel_values" or "latents"
    shards: list[str]  # the units split across slots and shuffled per epoch
    categories: dict[str, tuple[int, float]]  # {category: (n_images, multiply)}
    manifest: dict[str, Any]  # the pack manifest (a cache: its categories)

    def check(self, config: StreamConfig) -> None:
        """Raise (naming the setting and the fix) when the source cannot serve `config`."""

    def read(
        self, shards: Sequence[str], slot: int, slots: int, counter: SkipCounter
    ) -> Iterator[Sample]:
        """This slot's samples of `shards`, in order (`slot_share`)."""

    def render(
        self, sample: Sample, config: StreamConfig, rng: random.Random,
        noise: torch.Generator | None, counter: SkipCounter, *, train: bool,
    ) -> Example | None:  # fmt: skip
        """One copy of `sample` (None, counted, when it cannot be read). Training draws crop,
        flip and caption from `rng` and posterior noise from `noise`; validation (`train`
        False) uses the center crop, no flip, no caption dropout and the posterior mean."""
