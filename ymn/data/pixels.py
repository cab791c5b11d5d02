"""The pixel sample source: packed tar shards, decoded, cropped to a bucket, flipped, captioned.

`PixelSource` reads this slot's samples from the webdataset shards made by `ymn-pack` and turns
each drawn copy into an `Example` with `pixel_values` (3, H, W) in [-1, 1]: the crop (ED1's
placement, center or random) to the nearest aspect bucket, an optional flip, the face boxes
moved with the crop and flip, and a caption built for this draw.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache, partial
from typing import Any

import torch
from PIL import Image

from ymn.data.buckets import apply_crop, nearest_bucket, plan_crop, transform_meta
from ymn.data.captions import CaptionConfig, build_caption
from ymn.data.decode import (
    Sample,
    SkipCounter,
    decode,
    iter_tar,
    manifest_categories,
    parse_sample,
    to_tensor,
)
from ymn.data.sample_source import Example, StreamConfig
from ymn.data.slots import slot_share


def iter_samples(
    shards: Sequence[str], slot: int, slots: int, counter: SkipCounter
) -> Iterator[Sample]:
    """This slot's samples of the tar `shards` (`slot_share`), JSON parsed, images encoded."""
    for shard, (key, parts) in slot_share(shards, slot, slots, partial(iter_tar, counter=counter)):
        if (sample := parse_sample(shard, key, parts, counter)) is not None:
            yield sample


def render(
    sample: Sample,
    image: Image.Image,
    buckets: Sequence[tuple[int, int]],
    caption: CaptionConfig,
    rng: random.Random,
    *,
    crop: str = "ed1",
    flip_p: float = 0.0,
    dropout: bool = True,
) -> Example:
    """Crop `image` to its nearest bucket, maybe flip, move the face boxes, build the caption."""
    size = image.size
    bucket = _nearest_bucket(size, tuple(buckets))
    plan = plan_crop(size, bucket, crop, rng)
    flip = flip_p > 0 and rng.random() < flip_p
    pixels = to_tensor(apply_crop(image, bucket, plan, flip))
    meta = transform_meta(sample.meta, size, plan, flip)
    meta["flipped"] = flip
    text = build_caption(meta, caption, rng, dropout=dropout)
    return Example(sample.key, bucket, pixels, text, meta)


@lru_cache(maxsize=4096)
def _nearest_bucket(size: tuple[int, int], buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """`nearest_bucket`, memoised: a pure function of the image size, computed once per size."""
    return nearest_bucket(size, buckets)


class PixelSource:
    """Samples of packed shards (`resolve_shards` gives `shards` and `manifest`), as pixels."""

    seed_name = "stream"
    batch_key = "pixel_values"

    def __init__(self, shards: Sequence[str], manifest: Mapping[str, Any]) -> None:
        self.shards = list(shards)
        self.manifest = dict(manifest)
        self.categories = manifest_categories(self.manifest)

    def check(self, config: StreamConfig) -> None:
        """Every crop, flip and resolution can be rendered from pixels."""

    def read(
        self, shards: Sequence[str], slot: int, slots: int, counter: SkipCounter
    ) -> Iterator[Sample]:
        """This slot's samples of `shards`."""
        return iter_samples(shards, slot, slots, counter)

    def render(
        self, sample: Sample, config: StreamConfig, rng: random.Random,
        noise: torch.Generator | None, counter: SkipCounter, *, train: bool,
    ) -> Example | None:  # fmt: skip
        """Decode (once per sample; a bad image is counted once, None) and render one copy."""
        image = decode(sample, counter) if sample.data else None
        if image is None:
            return None
        if not train:
            return render(sample, image, config.buckets, config.caption, rng, crop="center",
                          dropout=False)  # fmt: skip
        return render(sample, image, config.buckets, config.caption, rng, crop=config.crop,
                      flip_p=config.flip_p)  # fmt: skip
