"""Aspect-ratio buckets, crops and flips, and how they move face boxes (EveryDream1 semantics).

A crop is planned in the frame of the *resized* image: the image is scaled by `scale` so it
covers its bucket, then `box` (left, top, right, bottom, in resized pixels, exactly the bucket's
size) is cut out. Face boxes follow the crop and the flip, so captions built afterwards name the
cells the faces really occupy.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

# ED1 `ldm/data/aspects.py`: each (w, h) also transposed except the square, in ED1's order
# (ties in nearest_bucket go to the first listed, as ED1's `min` does).
_ED1_LISTED: dict[int, list[tuple[int, int]]] = {
    512: [(512, 512), (576, 448), (640, 384), (768, 320), (832, 256), (896, 256), (960, 256),
          (1024, 256)],
    640: [(640, 640), (704, 576), (768, 512), (896, 448), (1024, 384), (1280, 320), (1408, 256),
          (1472, 256), (1536, 256), (1600, 256)],
    704: [(704, 704), (768, 640), (832, 576), (896, 512), (960, 512), (1024, 448), (1088, 448),
          (1152, 384), (1216, 384), (1280, 384), (1280, 320), (1408, 320), (1536, 320)],
}  # fmt: skip

ED1_JITTER = 20  # px of the source image, non-square buckets only
ED1_SQUARE_TRIM = 0.04  # square image into a smaller square bucket: trim up to 4% at random
FACE_CORE = 0.1  # a face survives a crop if its central 20% (centre ± 10% of its size) stays


def _with_transposes(listed: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    table = []
    for w, h in listed:
        table.append((w, h))
        if w != h:
            table.append((h, w))
    return table


ED1_BUCKETS: dict[int, list[tuple[int, int]]] = {
    res: _with_transposes(listed) for res, listed in _ED1_LISTED.items()
}

CropPolicy = Literal["ed1", "center", "random"]


@dataclass(frozen=True)
class CropPlan:
    """Resize the source by `scale`, then cut `box` = (left, top, right, bottom), resized px."""

    scale: float
    box: tuple[int, int, int, int]


def default_step(resolution: int) -> int:
    """Side granularity of computed buckets: 64 px from 512 on, down to 8 px for tiny models."""
    step = 64
    while step > 8 and step * 8 > resolution:
        step //= 2
    return step


def bucket_table(
    resolution: int, step: int | None = None, max_ratio: float = 4.0
) -> list[tuple[int, int]]:
    """Buckets (w, h) for a training resolution: ED1's table for 512/640/704 (when `step` is
    not given), else every (w, h) with sides multiples of `step` (default `default_step`), area
    <= resolution², aspect <= max_ratio, and for each width the tallest such height.
    """
    if step is None and resolution in ED1_BUCKETS:
        return list(ED1_BUCKETS[resolution])
    step = default_step(resolution) if step is None else step
    if step <= 0 or step % 8:
        raise ValueError(f"bucket step must be a positive multiple of 8 (VAE), got {step}")
    side = resolution // step * step
    if side < step:
        raise ValueError(f"resolution {resolution} is smaller than the bucket step {step}")
    area = resolution * resolution
    landscape = []
    for w in range(side + step, int(resolution * max_ratio) + step, step):
        h = area // w // step * step
        if h >= step and w / h <= max_ratio:
            landscape.append((w, h))
    return _with_transposes([(side, side), *landscape])


def nearest_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (first one on ties, as ED1)."""
    if not buckets:
        raise ValueError("no buckets to choose from")
    w, h = size
    aspect = w / h
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))


def resized_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The source size after scaling by `scale` (the frame `CropPlan.box` lives in)."""
    return round(size[0] * scale), round(size[1] * scale)


def _box(left: int, top: int, bucket: tuple[int, int]) -> tuple[int, int, int, int]:
    return left, top, left + bucket[0], top + bucket[1]


def _plan_ed1(size, bucket, rng: random.Random) -> CropPlan:
    """ED1's ImageTrainItem.hydrate, expressed as resize-then-crop."""
    (w, h), (bw, bh) = size, bucket
    jitter = rng.randint(0, ED1_JITTER)  # drawn for every image, as ED1 does
    if bw == bh and w == h:
        if w <= bw:
            return CropPlan(bw / w, _box(0, 0, bucket))
        trim = min(int(bw * ED1_SQUARE_TRIM), w - bw)
        scale = bw / (w - trim)
        excess = resized_size(size, scale)[0] - bw
        return CropPlan(scale, _box(round(excess * rng.random()), round(excess * rng.random()),
                                    bucket))  # fmt: skip
    scale = max(bw / w, bh / h)
    rw, rh = resized_size(size, scale)
    if bw == bh:  # square bucket: uniform crop along the long side
        return CropPlan(scale, _box(rng.randint(0, rw - bw), rng.randint(0, rh - bh), bucket))
    if w / h > bw / bh:  # too wide: crop from the left edge, shifted by the jitter
        half_excess = int((w - int(h * bw / bh)) / 2)
        left = min(round(min(jitter, half_excess) * scale), rw - bw)
        return CropPlan(scale, _box(max(left, 0), 0, bucket))
    half_excess = int((h - int(w * bh / bw)) / 2)
    top = min(round(min(jitter, half_excess) * scale), rh - bh)
    return CropPlan(scale, _box(0, max(top, 0), bucket))


def plan_crop(
    size: tuple[int, int], bucket: tuple[int, int], policy: CropPolicy, rng: random.Random
) -> CropPlan:
    """How to bring an image of `size` (w, h) to `bucket`: scale to cover it, then crop.

    ed1: non-square buckets crop at the top/left edge with 0-20 px jitter, square buckets
    uniformly at random (square images: a random trim of up to 4%); center; random.
    """
    if min(size) <= 0 or min(bucket) <= 0:
        raise ValueError(f"image size {size} and bucket {bucket} must be positive")
    if policy == "ed1":
        return _plan_ed1(size, bucket, rng)
    scale = max(bucket[0] / size[0], bucket[1] / size[1])
    rw, rh = resized_size(size, scale)
    ex, ey = rw - bucket[0], rh - bucket[1]
    if policy == "center":
        return CropPlan(scale, _box(ex // 2, ey // 2, bucket))
    if policy == "random":
        return CropPlan(scale, _box(rng.randint(0, ex), rng.randint(0, ey), bucket))
    raise ValueError(f"crop policy must be 'ed1', 'center' or 'random', got {policy!r}")


def apply_crop(
    image: Image.Image, bucket: tuple[int, int], plan: CropPlan, flip: bool
) -> Image.Image:
    """Resize + crop `image` to `bucket` as `plan` says (one bicubic resampling), then flip."""
    left, top, right, bottom = plan.box
    if (right - left, bottom - top) != tuple(bucket):
        raise ValueError(f"crop box {plan.box} does not match bucket {bucket}")
    w, h = image.size
    source = (
        max(left / plan.scale, 0.0),
        max(top / plan.scale, 0.0),
        min(right / plan.scale, float(w)),
        min(bottom / plan.scale, float(h)),
    )
    out = image.resize(tuple(bucket), resample=Image.Resampling.BICUBIC, box=source)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out


def transform_facepos(
    facepos: Sequence[Sequence[float]], size: tuple[int, int], plan: CropPlan, flip: bool
) -> tuple[list[list[float]], list[int]]:
    """Face boxes (fractions of the source) → fractions of the cropped, flipped output.

    Returns the kept boxes and their indices. As ASP's crop_faces, a face is kept when its
    central 20% stays inside the crop; kept boxes are not clipped (their centre is inside).
    """
    w, h = size
    left, top, right, bottom = plan.box
    bw, bh = right - left, bottom - top
    kept, indices = [], []
    for i, (fl, ft, fr, fb) in enumerate(facepos):
        x0, x1 = fl * w * plan.scale, fr * w * plan.scale
        y0, y1 = ft * h * plan.scale, fb * h * plan.scale
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        dx, dy = FACE_CORE * (x1 - x0), FACE_CORE * (y1 - y0)
        if cx - dx < left or cx + dx > right or cy - dy < top or cy + dy > bottom:
            continue
        box = [(x0 - left) / bw, (y0 - top) / bh, (x1 - left) / bw, (y1 - top) / bh]
        if flip:
            box = [1.0 - box[2], box[1], 1.0 - box[0], box[3]]
        kept.append(box)
        indices.append(i)
    return kept, indices


def transform_meta(
    meta: Mapping[str, Any], size: tuple[int, int], plan: CropPlan, flip: bool
) -> dict:
    """A copy of normalised metadata after crop + flip: facepos moved, faces cut by the crop
    dropped (with their characters when characters align with faces), n_faces/fh_ratio updated,
    and an int n_people reduced by the number of faces dropped.
    """
    out = dict(meta)
    facepos = list(meta.get("facepos") or [])
    if not facepos:
        return out
    kept, indices = transform_facepos(facepos, size, plan, flip)
    dropped = len(facepos) - len(kept)
    out["facepos"] = kept
    out["n_faces"] = len(kept)
    out["fh_ratio"] = max((b[3] - b[1] for b in kept), default=0.0)
    characters = list(meta.get("characters") or [])
    if len(characters) == len(facepos):
        out["characters"] = [characters[i] for i in indices]
    n_people = meta.get("n_people")
    if isinstance(n_people, int) and not isinstance(n_people, bool):
        out["n_people"] = max(n_people - dropped, 0)
    return out
