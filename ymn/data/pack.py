"""Pack an ASP / EveryDream image folder tree into webdataset shards plus a manifest.

`ymn-pack ROOT OUT` walks ROOT, gives every image folder (a "category") its multiply and
sampling probability, and writes `OUT/shard-000000.tar …` and `OUT/manifest.json` as
`ymn/data/CONTRACT.md` describes (each shard's size, sample count and sha256 included);
`ymn-pack --verify OUT` checks them and decodes every sample. Output bytes depend only on the
input: files are listed in sorted order and packed in a permutation seeded by `shuffle_seed`,
tar entries carry a fixed mtime (`ymn.data.shard_writer` writes shards and manifest), and the
worker count changes nothing.

Why shuffle: the stream reads a slot's shards in turn and mixes only within its shuffle buffer
(`ymn.data.stream`), so folder-by-folder shards (`shuffle_seed=None`, `--folder-order`) give a
stream whose category changes every few hundred steps; permuted, every shard holds the mix.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ymn.data.balance import IMAGE_SUFFIXES, compute_weights, is_image, read_weights_csv
from ymn.data.loss_scales import loss_scale_meta
from ymn.data.metadata import MetadataError, load_metadata
from ymn.data.multiply import dropped_message, read_multiply_txt
from ymn.data.shard_writer import (
    ShardSink,
    file_sha256,  # noqa: F401  (ymn.data.preflight imports it from here)
    inputs_fingerprint,
    remove_stale_shards,
    up_to_date,
    write_manifest,
)

MANIFEST_VERSION = 1
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
MULTIPLY_SOURCES = ("auto", "txt", "weights", "none")


class PackError(RuntimeError):
    """A sample could not be packed and `strict` was set."""


@dataclass(frozen=True)
class PackItem:
    """One image to pack: where it lives and what its folder contributes to its metadata."""

    source: str  # path relative to ROOT, "/" separators
    category: str
    multiply: float
    prob: float


@dataclass
class PackedSample:
    """A worker's result: either the encoded sample or the reason it was skipped."""

    item: PackItem
    key: str = ""
    ext: str = ""
    image: bytes = b""
    meta: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


# ---------------------------------------------------------------------------------------------
# Walking the tree
# ---------------------------------------------------------------------------------------------


def image_folders(root: Path) -> dict[str, list[str]]:
    """Map each image folder (relative, "/"-separated; "." for ROOT) to its sorted image files."""
    folders: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        images = sorted(f for f in filenames if is_image(Path(f)))
        if images:
            rel = Path(dirpath).relative_to(root).as_posix()
            folders[rel] = images
    return dict(sorted(folders.items()))


def sample_key(source: str) -> str:
    """A stable webdataset key for a relative path: safe characters, unique via a short hash.

    Dots are replaced because webdataset splits a key from its extension at the first dot.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", source.rsplit(".", 1)[0]).strip("_")[-80:]
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:10]
    return f"{stem}-{digest}" if stem else digest


def load_weight_rows(weights: str | Path | Sequence[tuple[str, float]] | None) -> list:
    """Weight rows `[(pattern, weight), ...]` from a CSV path, a sequence, or None (no rows)."""
    if weights is None:
        return []
    if isinstance(weights, str | Path):
        return [(str(p), float(w)) for p, w in read_weights_csv(Path(weights))]
    return [(str(p), float(w)) for p, w in weights]


def plan_items(
    root: Path,
    folders: dict[str, list[str]],
    rows: list[tuple[str, float]],
    multiply_from: str,
    min_multiply: float,
    max_multiply: float,
    rounding: str,
) -> list[PackItem]:
    """Give every image its folder's multiply and WeightTree probability, in sorted order."""
    if multiply_from not in MULTIPLY_SOURCES:
        raise ValueError(f"multiply_from={multiply_from!r}: use one of {MULTIPLY_SOURCES}")
    tree = compute_weights(
        root, rows, min_multiply=min_multiply, max_multiply=max_multiply, rounding=rounding
    )
    items = []
    for category, files in folders.items():
        weight = tree.get(category) or tree.get("" if category == "." else category)
        prob = float(weight.prob) if weight is not None else 0.0
        multiply = _folder_multiply(root / category, weight, multiply_from)
        for name in files:
            source = name if category == "." else f"{category}/{name}"
            items.append(PackItem(source, category, multiply, prob))
    return items


def _folder_multiply(folder: Path, weight: Any, multiply_from: str) -> float:
    """multiply.txt (EveryDream; never inherited) and/or the WeightTree multiply, per mode."""
    if multiply_from in ("auto", "txt"):
        value = read_multiply_txt(folder)
        if value is not None:
            return float(value)
        if multiply_from == "txt":
            return 1.0
    if multiply_from in ("auto", "weights") and weight is not None:
        return float(weight.multiply)
    return 1.0


# ---------------------------------------------------------------------------------------------
# One sample (runs in worker processes)
# ---------------------------------------------------------------------------------------------


def packing_order(items: list[PackItem], shuffle_seed: int | None) -> list[PackItem]:
    """The items in a permutation seeded by `shuffle_seed`, or in folder order for None."""
    if shuffle_seed is None:
        return items
    shuffled = list(items)
    random.Random(f"ymn-pack:{shuffle_seed}").shuffle(shuffled)
    return shuffled


def pack_sample(item: PackItem, root: Path, max_side: int | None) -> PackedSample:
    """Verify, optionally downscale and load the metadata of one image; never raises."""
    path = root / item.source
    ext = IMAGE_SUFFIXES[path.suffix.lower()]
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size = im.size
            if max_side and max(size) > max_side:
                data, size = _downscale(im, max_side, ext)
    except Exception as exc:  # PIL raises many types for broken files
        return PackedSample(item, reason=_reason("unreadable image", exc, root))
    try:
        meta = load_metadata(path)
    except (MetadataError, OSError, ValueError) as exc:
        return PackedSample(item, reason=_reason("bad metadata", exc, root))
    meta = dict(meta)
    meta.update(
        source=item.source,
        category=item.category,
        multiply=item.multiply,
        prob=item.prob,
        size=[int(size[0]), int(size[1])],
        **loss_scale_meta(path.parent),  # ED2 loss_scale.txt (absent: no key)
    )
    return PackedSample(item, key=sample_key(item.source), ext=ext, image=data, meta=meta)


def _reason(what: str, exc: Exception, root: Path) -> str:
    """A skip reason free of absolute paths and object addresses, so manifests are reproducible."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc)).replace(f"{root}{os.sep}", "")
    return f"{what}: {type(exc).__name__}: {text}"


def _downscale(im: Image.Image, max_side: int, ext: str) -> tuple[bytes, tuple[int, int]]:
    """Resize so the longest side is `max_side`, re-encoding in the original format."""
    scale = max_side / max(im.size)
    size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
    small = im.resize(size, Image.Resampling.LANCZOS)
    if ext == "jpg" and small.mode not in ("RGB", "L"):
        small = small.convert("RGB")
    buf = io.BytesIO()
    options = {"quality": 95} if ext in ("jpg", "webp") else {}
    small.save(buf, format=PIL_FORMATS[ext], **options)
    return buf.getvalue(), size


def _process(items: list[PackItem], root: Path, max_side: int | None, workers: int) -> Iterator:
    """Yield `PackedSample`s in input order, using `workers` processes when > 1."""
    work = partial(pack_sample, root=root, max_side=max_side)
    if workers <= 1:
        yield from map(work, items)
        return
    with get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(work, items, chunksize=8)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def pack_folder(
    root: Path,
    out: Path,
    weights: str | Path | Sequence[tuple[str, float]] | None = None,
    max_side: int | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    strict: bool = False,
    multiply_from: str = "auto",
    min_multiply: float = 1.0,
    max_multiply: float = 250.0,
    rounding: str = "int",
    force: bool = False,
    progress: bool = True,
    shuffle_seed: int | None = 0,
) -> dict[str, Any]:
    """Pack ROOT into webdataset shards under OUT and return the manifest (also written)."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: pass the dataset root to pack.")
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}: use a positive number of samples per shard")
    rows = load_weight_rows(weights)
    options = {
        "weights": [list(r) for r in rows],
        "max_side": max_side,
        "shard_size": shard_size,
        "strict": strict,
        "multiply_from": multiply_from,
        "min_multiply": min_multiply,
        "max_multiply": max_multiply,
        "rounding": rounding,
        "shuffle_seed": shuffle_seed,
    }
    fingerprint = inputs_fingerprint(root, options)
    if not force and (existing := up_to_date(out, fingerprint)) is not None:
        return existing
    out.mkdir(parents=True, exist_ok=True)
    folders = image_folders(root)
    items = plan_items(root, folders, rows, multiply_from, min_multiply, max_multiply, rounding)
    items = packing_order(items, shuffle_seed)
    sink = ShardSink(out, shard_size)
    categories: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    results = _process(items, root, max_side, workers)
    for result in tqdm(results, total=len(items), desc="ymn-pack", disable=not progress):
        if result.reason is not None:
            if strict:
                raise PackError(
                    f"{root / result.item.source}: {result.reason}. Fix or remove the file, "
                    "or pack without --strict to skip it (it will be listed in the manifest)."
                )
            skipped.append({"source": result.item.source, "reason": result.reason})
            continue
        entry = categories.setdefault(
            result.item.category,
            {"n_images": 0, "multiply": result.item.multiply, "prob": result.item.prob},
        )
        result.meta["category_index"] = entry["n_images"]  # dense over packed samples
        entry["n_images"] += 1
        meta = json.dumps(result.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
        sink.write({"__key__": result.key, result.ext: result.image, "json": meta})
    sink.close()
    remove_stale_shards(out, {s["name"] for s in sink.shards})
    manifest = {
        "version": MANIFEST_VERSION,
        "total_images": sum(c["n_images"] for c in categories.values()),
        "sum_multiply": sum(c["n_images"] * c["multiply"] for c in categories.values()),
        "categories": categories,
        "weights": options,
        "shards": sink.shards,
        "skipped": skipped,
        "inputs": {"fingerprint": fingerprint},
    }
    write_manifest(out, manifest)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    """The `ymn-pack` command line."""
    p = argparse.ArgumentParser(prog="ymn-pack", description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, nargs="?", help="dataset root (ASP/EveryDream tree)")
    p.add_argument("out", type=Path, nargs="?", help="output folder: shard-*.tar, manifest.json")
    p.add_argument(
        "--verify",
        type=Path,
        metavar="OUT",
        help="check OUT's shards against its manifest (sha256) and decode every sample",
    )
    p.add_argument("--weights", type=Path, help="WeightTree CSV (pattern,weight; no header)")
    p.add_argument("--max-side", type=int, help="downscale so the longest side is at most PX")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--strict", action="store_true", help="abort on the first bad sample")
    p.add_argument("--multiply-from", choices=MULTIPLY_SOURCES, default="auto")
    p.add_argument("--min-multiply", type=float, default=1.0)
    p.add_argument("--max-multiply", type=float, default=250.0)
    p.add_argument("--rounding", default="int", help="WeightTree multiply rounding")
    p.add_argument("--force", action="store_true", help="re-pack even if OUT is up to date")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--shuffle-seed", type=int, default=0, help="packing permutation seed")
    help_folder = "pack folder by folder (the stream then serves one category at a time)"
    order.add_argument(
        "--folder-order", action="store_const", const=None, dest="shuffle_seed", help=help_folder
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run `ymn-pack`; print a summary (skipped samples included) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify is not None:
        return verify(args.verify)
    if args.root is None or args.out is None:
        parser.error("pass ROOT and OUT to pack, or --verify OUT to check a packed folder")
    try:
        manifest = pack_folder(
            args.root,
            args.out,
            weights=args.weights,
            max_side=args.max_side,
            shard_size=args.shard_size,
            workers=args.workers,
            strict=args.strict,
            multiply_from=args.multiply_from,
            min_multiply=args.min_multiply,
            max_multiply=args.max_multiply,
            rounding=args.rounding,
            force=args.force,
            shuffle_seed=args.shuffle_seed,
        )
    except (PackError, FileNotFoundError, ValueError) as exc:
        print(f"ymn-pack: error: {exc}")
        return 1
    print(
        f"ymn-pack: {manifest['total_images']} images in {len(manifest['categories'])} "
        f"categories -> {len(manifest['shards'])} shards in {args.out}; "
        f"sum multiply {manifest['sum_multiply']:.2f}; skipped {len(manifest['skipped'])}"
    )
    for entry in manifest["skipped"]:
        print(f"  skipped {entry['source']}: {entry['reason']}")
    categories = {k: (c["n_images"], c["multiply"]) for k, c in manifest["categories"].items()}
    if (dropped := dropped_message(categories, "ed1")) is not None:
        print(f"ymn-pack: warning: with multiply_mode=ed1 (the default) {dropped}", file=sys.stderr)
    return 0


def verify(out: Path) -> int:
    """`ymn-pack --verify OUT`: list every bad shard and sample; 1 when any, else 0."""
    from ymn.data.preflight import verify_pack

    try:
        problems = verify_pack(out)
    except FileNotFoundError as exc:
        print(f"ymn-pack: error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"  bad: {problem}")
    if problems:
        print(f"ymn-pack --verify: {len(problems)} problem(s) in {out}; re-pack it (--force)")
        return 1
    print(f"ymn-pack --verify: {out} is intact (sha256, sample counts, every sample decodes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
