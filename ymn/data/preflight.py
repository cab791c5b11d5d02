"""Checks before training: what the run would otherwise lose, or choke on, without a word.

At data setup (`run_preflight`, called once by `YmnDataModule.setup`, rank 0 only):
- folders the multiply mode drops (ED1: multiply.txt < 1 gives 0 copies);
- captions longer than CLIP's 77 tokens: the share that loses its tail and the mean tokens
  lost, over a fixed-size, deterministic (systematic) sample of the epoch-0 draws;
- shards whose size or sample count differ from the manifest (cheap: tar headers only), and
  their sha256 when all shards together are small enough to hash in a moment.

`ymn-pack --verify OUT` (`verify_pack`) checks every shard's sha256 and decodes every sample.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from ymn.data.caption_tokens import token_counts
from ymn.data.captions import CaptionConfig, build_caption
from ymn.data.decode import IMAGE_KEYS, split_name, tar_samples
from ymn.data.multiply import Mode, draws_for_sample, dropped_images, plan_epoch, warn_dropped
from ymn.data.tokenizer import token_limit

log = logging.getLogger(__name__)

CAPTION_SAMPLE_SIZE = 512  # about this many packed samples have their captions measured
CAPTIONS_PER_SAMPLE = 4  # captions built per sampled sample (each weighted by its copies)
HASH_AT_SETUP_BYTES = 256 << 20  # hash every shard at setup when all together are this small


class PlannedStream(Protocol):
    """What the checks read from the training stream (`ymn.data.stream.TrainStream`)."""

    shards: Sequence[str]
    categories: Mapping[str, tuple[int, float]]
    multiply_mode: Mode
    seed: int
    val_fraction: float
    caption: CaptionConfig
    tokenizer: Any


@dataclass
class CaptionLengthStats:
    """Caption lengths in CLIP tokens (start and end tokens included) against the limit."""

    limit: int
    n_samples: int
    n_captions: int
    truncated_share: float  # of draws, each sample weighted by its copies in epoch 0
    mean_tokens_lost: float  # per truncated draw (0 when none is truncated)
    max_tokens: int


@dataclass
class PreflightReport:
    """What `run_preflight` found; the run's data manifest records it (`as_dict`)."""

    dropped: dict[str, int] = field(default_factory=dict)  # folder -> images never drawn
    captions: CaptionLengthStats | None = None
    shard_problems: list[str] = field(default_factory=list)  # one "shard: what" per bad shard

    def metrics(self) -> dict[str, float]:
        """`data/*` values to log once at the start of the fit."""
        values = {
            "data/dropped_images": float(sum(self.dropped.values())),
            "data/bad_shards": float(len(self.shard_problems)),
        }
        if self.captions is not None:
            values["data/captions_truncated_share"] = self.captions.truncated_share
            values["data/caption_tokens_lost_mean"] = self.captions.mean_tokens_lost
        return values

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Setup-time checks
# ---------------------------------------------------------------------------------------------


def run_preflight(stream: PlannedStream, manifest: Mapping[str, Any]) -> PreflightReport:
    """Run every setup-time check on rank 0, warn about what is wrong, return the findings."""
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return PreflightReport()
    report = PreflightReport()
    warn_dropped(stream.categories, stream.multiply_mode, log)
    report.dropped = dropped_images(stream.categories, stream.multiply_mode)
    report.shard_problems = check_shards(stream.shards, manifest)
    for problem in report.shard_problems:
        log.warning(
            "shard %s. Run `ymn-pack --verify %s` to list the bad samples, then re-pack.",
            problem,
            _shard_folder(stream.shards),
        )
    report.captions = caption_stats(stream)
    return report


def _shard_folder(shards: Sequence[str]) -> str:
    return str(Path(shards[0]).parent) if shards else "OUT"


def caption_stats(stream: PlannedStream) -> CaptionLengthStats | None:
    """Share of epoch-0 draws whose caption CLIP truncates, and mean tokens lost; logged.
    Captions are built from the packed metadata, before cropping (a crop that cuts a face
    off shortens the face-position part a little)."""
    if stream.tokenizer is None:
        log.info("caption lengths not checked: no tokenizer set on the data module")
        return None
    limit = token_limit(stream.tokenizer)  # 77, or model.max_token_length + 2
    captions, weights = [], []
    n_samples = 0
    for key, meta, copies in sample_draws(stream):
        n_samples += 1
        built = min(copies, CAPTIONS_PER_SAMPLE)
        for j in range(built):
            rng = random.Random(f"preflight:{key}:{j}")
            captions.append(build_caption(meta, stream.caption, rng, dropout=False))
            weights.append(copies / built)
    if not captions:
        return None
    counts = token_counts(stream.tokenizer, captions)
    total = sum(weights)
    over = sum(w for w, n in zip(weights, counts, strict=True) if n > limit)
    lost = sum(w * max(0, n - limit) for w, n in zip(weights, counts, strict=True))
    mean_lost = lost / over if over else 0.0
    stats = CaptionLengthStats(
        limit, n_samples, len(captions), over / total, mean_lost, max(counts)
    )
    level = logging.WARNING if stats.truncated_share > 0 else logging.INFO
    log.log(
        level,
        "captions: %.1f%% of draws exceed CLIP's %d tokens and lose their tail (%.1f tokens "
        "each on average, longest %d; %d captions of %d sampled images, no dropout). "
        "See where the cut falls with `ymn-caption SHARD.tar`; shorten with caption.max_tags.",
        100 * stats.truncated_share,
        limit,
        stats.mean_tokens_lost,
        stats.max_tokens,
        stats.n_captions,
        stats.n_samples,
    )
    return stats


def sample_draws(
    stream: PlannedStream, budget: int = CAPTION_SAMPLE_SIZE
) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(key, metadata, copies in epoch 0) of every k-th packed sample (k chosen so about
    `budget` are read), skipping held-out and undrawn ones: a deterministic systematic sample
    of the epoch's draws. Only the json members are read; the images are seeked over."""
    from ymn.data.decode import is_val_key

    plans = plan_epoch(stream.categories, stream.multiply_mode, stream.seed, 0)
    stride = max(1, math.ceil(sum(n for n, _ in stream.categories.values()) / budget))
    seen = 0
    for shard in stream.shards:
        for key, meta in _shard_metadata(shard):
            seen += 1
            if (seen - 1) % stride:
                continue
            plan = plans.get(str(meta.get("category")))
            index = meta.get("category_index")
            if plan is None or not isinstance(index, int) or not 0 <= index < plan.n_images:
                continue  # the stream counts and names these
            if is_val_key(key, stream.val_fraction):
                continue
            copies = draws_for_sample(meta["category"], index, plan, stream.seed, 0)
            if copies > 0:
                yield key, meta, copies


def _shard_metadata(shard: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, json) of a shard's samples in order, reading only the json members' bytes."""
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                key, ext = split_name(member.name)
                if member.isfile() and ext == "json":
                    try:
                        meta = json.loads(tar.extractfile(member).read().decode("utf-8"))
                    except (ValueError, UnicodeDecodeError):
                        continue
                    if isinstance(meta, dict):
                        yield key, meta
    except (OSError, tarfile.TarError, EOFError):
        return  # check_shards names the shard


# ---------------------------------------------------------------------------------------------
# Shards against the manifest
# ---------------------------------------------------------------------------------------------


def count_samples(path: str | Path) -> tuple[int, str | None]:
    """(samples, error or None) of a tar shard, reading headers only (seeks over the data)."""
    keys: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    keys.add(split_name(member.name)[0])
            end = tar.offset
        if os.path.getsize(path) < end + 2 * tarfile.BLOCKSIZE:
            return len(keys), f"no end-of-archive marker after byte {end}"
    except (OSError, tarfile.TarError, EOFError) as exc:
        return len(keys), f"{type(exc).__name__}: {exc}"
    return len(keys), None


def check_shard(path: str | Path, entry: Mapping[str, Any], *, sha256: bool) -> list[str]:
    """What differs between shard `path` and its manifest `entry` (size, samples, sha256)."""
    if not os.path.isfile(path):
        return ["file not found"]
    problems = []
    size = os.path.getsize(path)
    if "size" in entry and size != int(entry["size"]):
        problems.append(f"{size} bytes, the manifest says {entry['size']} (truncated or replaced)")
    n, error = count_samples(path)
    if error is not None:
        problems.append(f"unreadable tar after {n} samples ({error})")
    if "n_samples" in entry and n != int(entry["n_samples"]):
        problems.append(f"{n} samples, the manifest says {entry['n_samples']}")
    if sha256 and entry.get("sha256"):
        from ymn.data.pack import file_sha256

        if file_sha256(Path(path)) != entry["sha256"]:
            problems.append("sha256 differs from the manifest (the bytes changed since packing)")
    return problems


def check_shards(
    shards: Sequence[str], manifest: Mapping[str, Any], *, sha256: bool | None = None
) -> list[str]:
    """`"shard: what differs"`, one per shard that differs from the manifest. `sha256=None`
    hashes only when all shards together are at most `HASH_AT_SETUP_BYTES`."""
    entries = {str(s.get("name")): s for s in manifest.get("shards") or []}
    if sha256 is None:
        total = sum(os.path.getsize(p) for p in shards if os.path.isfile(p))
        sha256 = total <= HASH_AT_SETUP_BYTES
    problems = []
    for shard in shards:
        entry = entries.get(Path(shard).name)
        if entry is None:
            problems.append(f"{shard}: not listed in the manifest, so it cannot be checked")
            continue
        if found := check_shard(shard, entry, sha256=sha256):
            problems.append(f"{shard}: {'; '.join(found)}")
    if entries and not any("size" in e for e in entries.values()):
        log.info("the manifest records no shard sizes: re-pack with ymn-pack for a size check")
    return problems


# ---------------------------------------------------------------------------------------------
# ymn-pack --verify: every byte and every sample
# ---------------------------------------------------------------------------------------------


def verify_pack(out: str | Path) -> list[str]:
    """Every problem in the packed folder OUT: shards against the manifest (sha256 included)
    and every sample decoded (json, category, image). Empty when all is well."""
    from ymn.data.decode import MANIFEST, read_manifest

    out = Path(out)
    manifest = read_manifest(out / MANIFEST, str(out), "Pack the folder first: ymn-pack ROOT OUT.")
    categories = manifest["categories"]
    problems = []
    for entry in manifest.get("shards") or []:
        path = out / str(entry["name"])
        if found := check_shard(path, entry, sha256=True):
            problems.append(f"{path}: {'; '.join(found)}")
        if path.is_file():
            problems += sample_problems(path, categories)
    return problems


def sample_problems(path: Path, categories: Mapping[str, Any]) -> list[str]:
    """`"shard:key: problem"` for each sample of shard `path` that training could not use."""
    problems = []
    try:
        for key, parts in _iter_samples(path):
            problems += [f"{path}:{key}: {p}" for p in _sample_faults(parts, categories)]
    except (OSError, tarfile.TarError, EOFError) as exc:
        problems.append(f"{path}: reading stopped ({type(exc).__name__}: {exc})")
    return problems


def _iter_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    with tarfile.open(path, mode="r:") as tar:
        yield from tar_samples(tar)


def _sample_faults(parts: Mapping[str, bytes], categories: Mapping[str, Any]) -> list[str]:
    faults = _json_faults(parts["json"], categories) if "json" in parts else ["no json member"]
    data = next((parts[e] for e in IMAGE_KEYS if e in parts), None)
    if data is None:
        return [*faults, "no image"]
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # PIL raises many types for broken files
        faults.append(f"image does not decode ({type(exc).__name__}: {exc})")
    return faults


def _json_faults(raw: bytes, categories: Mapping[str, Any]) -> list[str]:
    try:
        meta = json.loads(raw.decode("utf-8"))
        category, index = meta["category"], meta["category_index"]
    except KeyError as exc:
        return [f"json lacks key {exc}"]
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        return [f"unreadable json ({type(exc).__name__}: {exc})"]
    if not isinstance(category, str) or category not in categories:
        return [f"category {category!r} is not in the manifest"]
    if not isinstance(index, int) or not 0 <= index < categories[category]["n_images"]:
        return [f"category_index {index!r} outside 0..n_images-1 of {category!r}"]
    return []
