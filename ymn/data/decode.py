"""Reading packed shards: shard patterns, the manifest, tar samples, images and tensors.

Shards are local files (a folder with its manifest, a brace pattern or a glob) or URLs that
webdataset opens itself (`pipe:COMMAND`, `http(s)://…`, any scheme of `webdataset.gopen`,
brace patterns expanded), with the manifest fetched beside them. Local tars are read here with
an end-of-archive check (a tar cut at a block boundary is noticed); URL shards go through
webdataset's opener (`gopen`) and the same tar reading, with the same checks and counts.

Everything here tolerates bad input: a missing shard, a truncated tar, a missing or broken
`json`, or an undecodable image is skipped with a warning naming it, and counted in a
`SkipCounter`, so an epoch goes on.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "manifest.json"


class ShardSetupError(FileNotFoundError):
    """The shard pattern or its manifest cannot be used."""


class SkipCounter(Counter):
    """Counts of skipped input by reason; `skip` also logs a warning naming the culprit."""

    def skip(self, reason: str, what: str, detail: str = "") -> None:
        """Count one skipped item under `reason` and warn about `what`."""
        self[reason] += 1
        log.warning("skipping %s (%s)%s", what, reason, f": {detail}" if detail else "")


@dataclass
class Sample:
    """One packed sample, image still encoded; `image()` decodes it once and caches it."""

    key: str
    meta: dict[str, Any]
    data: bytes
    where: str  # "shard.tar:key", for messages
    pending: int = 0  # copies of this sample still waiting in the shuffle buffer
    _image: Image.Image | None = field(default=None, repr=False)

    @property
    def category(self) -> str:
        return str(self.meta.get("category", ""))

    def image(self) -> Image.Image:
        """The RGB image (decoded on first use)."""
        if self._image is None:
            with io.BytesIO(self.data) as buffer:
                image = Image.open(buffer)
                image.load()  # decoded while the buffer is open; the pixels outlive it
            # convert() copies even when the mode already is RGB: convert only when needed
            self._image = image if image.mode == "RGB" else image.convert("RGB")
        return self._image

    def release(self) -> None:
        """Drop the decoded image (and bytes) once no copy needs them."""
        self._image, self.data = None, b""


# ---------------------------------------------------------------------------------------------
# Shard patterns and the manifest
# ---------------------------------------------------------------------------------------------


def is_url(shard: str) -> bool:
    """True for shards webdataset opens (`pipe:COMMAND`, `http://`, `https://`, `scheme://`)."""
    return str(shard).startswith("pipe:") or "://" in str(shard)


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    paths: list[str] = []
    for part in braceexpand(pattern):
        magic = glob.has_magic(part) and not is_url(part)
        paths.extend(sorted(glob.glob(part)) if magic else [part])
    return paths


def manifest_beside(shard: str) -> str:
    """The manifest URL beside a shard URL: its last `NAME.tar` replaced by `manifest.json`
    (`pipe:aws s3 cp s3://b/shard-000000.tar -` -> `pipe:aws s3 cp s3://b/manifest.json -`)."""
    found = list(re.finditer(r"[^/\s'\"=]+\.tar(?=$|[\s'\"?#])", shard))
    if not found:
        raise ShardSetupError(
            f"shard URL {shard!r} names no NAME.tar to find the manifest beside; "
            "set data.manifest to the manifest's path or URL"
        )
    last = found[-1]
    return shard[: last.start()] + MANIFEST + shard[last.end() :]


def resolve_shards(pattern: str, manifest: str | Path | None = None) -> tuple[list[str], dict]:
    """Shard paths and the manifest for a directory, brace pattern (`shard-{000..009}.tar`) or
    glob. A directory uses its manifest's shard list (so a shard missing later is noticed and
    skipped). Raises ShardSetupError naming the pattern when nothing usable is found.
    """
    hint = "Build shards with `ymn-pack ROOT OUT` (or `ymn-synth` then `ymn-pack`) first."
    pattern = str(pattern)
    if is_url(pattern):  # checked when read: a shard that cannot be opened is counted
        shards = _expand(pattern)
        where = str(manifest) if manifest else manifest_beside(shards[0])
        return shards, read_manifest(where, pattern, hint)
    if os.path.isdir(pattern):
        manifest_path = Path(manifest) if manifest else Path(pattern) / MANIFEST
        data = read_manifest(manifest_path, pattern, hint)
        shards = [str(Path(pattern) / s["name"]) for s in data.get("shards", [])]
        if not shards:
            shards = sorted(glob.glob(os.path.join(pattern, "*.tar")))
    else:
        shards = _expand(pattern)
        if not any(os.path.exists(p) for p in shards):
            raise ShardSetupError(f"shard pattern {pattern!r} matches no files. {hint}")
        manifest_path = Path(manifest) if manifest else Path(shards[0]).parent / MANIFEST
        data = read_manifest(manifest_path, pattern, hint)
    if not shards:
        raise ShardSetupError(f"shard pattern {pattern!r} names no shards. {hint}")
    return shards, data


def read_manifest(path: Path | str, pattern: str, hint: str = "") -> dict:
    """Load `manifest.json` (a path or a URL); ShardSetupError naming it (and the pattern) when
    absent or broken."""
    try:
        data = json.loads(_read_bytes(str(path)).decode("utf-8"))
    except FileNotFoundError:
        raise ShardSetupError(
            f"no manifest at {path} for shard pattern {pattern!r}. {hint}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ShardSetupError(f"{path}: unreadable manifest ({exc}); re-run ymn-pack") from exc
    if not isinstance(data.get("categories"), dict):
        raise ShardSetupError(f"{path}: manifest has no 'categories'; re-run ymn-pack")
    return data


def _read_bytes(path: str) -> bytes:
    """A local file's bytes, or a URL's through webdataset's opener (FileNotFoundError when the
    URL cannot be read)."""
    if not is_url(path):
        return Path(path).read_bytes()
    from webdataset import gopen

    try:
        with gopen(path) as stream:
            data = stream.read()
    except Exception as exc:  # the opener raises IOError, ValueError, ... for a bad URL
        raise FileNotFoundError(f"{path}: {exc}") from exc
    if not data:
        raise FileNotFoundError(f"{path}: nothing was read")
    return data


def manifest_categories(manifest: dict) -> dict[str, tuple[int, float]]:
    """{category: (n_images, raw multiply)} as `plan_epoch` takes it."""
    return {
        name: (int(c["n_images"]), float(c.get("multiply", 1.0)))
        for name, c in sorted(manifest["categories"].items())
    }


# ---------------------------------------------------------------------------------------------
# Tar samples
# ---------------------------------------------------------------------------------------------


def split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the basename."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def tar_samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of an open tar: consecutive files of one key grouped."""
    key, parts = None, {}
    for member in tar:
        if not member.isfile():
            continue
        k, ext = split_name(member.name)
        if k != key and key is not None:
            yield key, parts
            parts = {}
        key = k
        parts[ext] = tar.extractfile(member).read()
    if key is not None:
        yield key, parts


def iter_tar(path: str, counter: SkipCounter) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of a tar shard, streamed; a missing file or a truncated
    tar is counted and ends the shard (the incomplete last sample is dropped). URLs are read
    by `iter_url_tar`."""
    if is_url(path):
        yield from iter_url_tar(path, counter)
        return
    if not os.path.exists(path):
        counter.skip("missing_shard", path, "file not found; re-run ymn-pack or fix the pattern")
        return
    pending = None  # held back until the shard is known to be whole
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for sample in tar_samples(tar):
                if pending is not None:
                    yield pending
                pending = sample
            # a tar cut at a block boundary ends without error: check the end-of-archive marker
            if os.path.getsize(path) < tar.offset + 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"no end-of-archive marker after byte {tar.offset}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        counter.skip("truncated_shard", path, f"{type(exc).__name__}: {exc}")
        return
    if pending is not None:
        yield pending


def iter_url_tar(url: str, counter: SkipCounter) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of a shard URL opened by webdataset's `gopen`. A shard
    that yields nothing is counted as `missing_shard`, one that breaks off (no end-of-archive
    marker, a command's bad exit status) as `truncated_shard`, its incomplete last sample
    dropped: what `iter_tar` does for local files, and what webdataset's own tar expander
    would not notice (a stream cut short ends its tar without an error)."""
    from webdataset import gopen

    pending, read, finished = None, 0, False
    try:
        stream = _CountingReader(gopen(url))
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for sample in tar_samples(tar):
                    if pending is not None:
                        yield pending
                        read += 1
                    pending = sample
                finished = True
                if stream.drain() < tar.offset + 2 * tarfile.BLOCKSIZE:
                    raise tarfile.ReadError(f"no end-of-archive marker after byte {tar.offset}")
        finally:
            try:
                stream.close()  # waits for a `pipe:` command; raises on a bad exit status
            except Exception:
                if finished:  # (not when the reader stopped early and cut the command off)
                    raise
    except Exception as exc:  # the openers raise IOError, ValueError, ... for a bad URL
        reason = "truncated_shard" if read or pending is not None else "missing_shard"
        counter.skip(reason, url, f"{type(exc).__name__}: {exc}")
        return
    if pending is not None:
        yield pending


class _CountingReader(io.RawIOBase):
    """A read-only stream over another that counts the bytes read (for the end-marker check)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.n_read = stream, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.n_read += len(data)
        return data

    def drain(self) -> int:
        """Read what is left (the archive's end blocks); the total bytes read."""
        while self.read(1 << 16):
            pass
        return self.n_read

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.stream.close()


def parse_sample(
    shard: str, key: str, parts: dict[str, bytes], counter: SkipCounter
) -> Sample | None:
    """A `Sample` from raw tar parts (JSON parsed, image still encoded), or None if unusable."""
    where = f"{shard}:{key}"
    if "json" not in parts:
        counter.skip("missing_json", where)
        return None
    try:
        meta = json.loads(parts["json"].decode("utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("category_index"), int):
            raise ValueError("expected an object with 'category' and int 'category_index'")
        if not isinstance(meta.get("category"), str):
            raise ValueError("expected an object with 'category' and int 'category_index'")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        counter.skip("bad_json", where, f"{type(exc).__name__}: {exc}")
        return None
    data = next((parts[e] for e in IMAGE_KEYS if e in parts), None)
    if data is None:
        counter.skip("missing_image", where)
        return None
    return Sample(key, meta, data, where)


def decode(sample: Sample, counter: SkipCounter) -> Image.Image | None:
    """The sample's RGB image, or None (counted as `bad_image`) when it cannot be decoded."""
    try:
        return sample.image()
    except Exception as exc:  # PIL raises many types for broken files
        counter.skip("bad_image", sample.where, f"{type(exc).__name__}: {exc}")
        return None


# ---------------------------------------------------------------------------------------------
# Splits and tensors
# ---------------------------------------------------------------------------------------------


def key_fraction(key: str) -> float:
    """A stable number in [0, 1) from a sample key (sha256), the same on every machine."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def is_val_key(key: str, val_fraction: float) -> bool:
    """True when `key` belongs to the held-out validation split."""
    return val_fraction > 0 and key_fraction(key) < val_fraction


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor in [-1, 1], shape (3, H, W) (a view of an (H, W, 3) array).

    One pass from PIL's bytes to float32 (no intermediate uint8 copy); other modes are converted
    to RGB first. The values are exact: integers 0..255 in float32, then / 127.5 - 1.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div_(127.5).sub_(1.0)
