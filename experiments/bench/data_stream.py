"""data_stream: the full weighted stream (decode, bucket, crop, caption, tokenize) vs a bare PIL
decode + resize of the same shards, by DataLoader worker count. Figure: samples/s over one
epoch (worker start-up included for both). Target: stream >= 0.9 x bare at every worker count.
Each stream run gets a fresh tokenizer, so its per-word token cache starts cold (as in the first
epoch of training, or every epoch with non-persistent workers). `full_stream` is loaded as
YmnDataModule loads it (`batch_size=None`, default collate); `full_stream_keep_batch` (informative)
passes `collate_fn=keep_batch`, which skips `default_convert`'s walk over every batch."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from experiments.bench.common import (
    interleave,
    paired_ratio,
    setup_torch,
    summarize,
    synthetic_shards,
)

RES, BATCH = 128, 8


class BareDecode(IterableDataset):
    """Every image of the shards: PIL decode, RGB, bicubic resize to RES², tensor in [-1, 1].

    As lean as the stream's own decode: no RGB conversion (a copy) of an RGB image, one pass
    from PIL's bytes to float32. The synthetic images are square, so RES² is their bucket."""

    def __init__(self, shards: list[str]) -> None:
        self.shards = shards

    def __iter__(self):
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info else (0, 1)
        for shard in self.shards[worker::n]:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if member.name.endswith((".png", ".jpg", ".webp")):
                        data = tar.extractfile(member).read()
                        with Image.open(io.BytesIO(data)) as im:
                            im = im if im.mode == "RGB" else im.convert("RGB")
                            im = im.resize((RES, RES), Image.Resampling.BICUBIC)
                        arr = np.asarray(im, dtype=np.float32)
                        yield torch.from_numpy(arr).permute(2, 0, 1).div_(127.5).sub_(1)


def rate(loader: DataLoader, count) -> float:
    """Samples per second over one pass of `loader`."""
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += count(batch)
    return n / (time.perf_counter() - start)


def run(quick: bool = False) -> dict[str, Any]:
    """Both pipelines at 0, 1 and 2 workers, interleaved repeats."""
    setup_torch()
    from ymn.data.decode import resolve_shards
    from ymn.data.pixels import PixelSource
    from ymn.data.sample_source import StreamConfig
    from ymn.data.stream import TrainStream, keep_batch
    from ymn.data.tokenizer import load_clip_tokenizer

    n_images, repeats = (120, 2) if quick else (480, 5)
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic_shards(Path(tmp), n=n_images, size=256, shard_size=40)
        shards, manifest = resolve_shards(str(folder))

        def bare(workers: int) -> float:
            loader = DataLoader(BareDecode(shards), batch_size=BATCH, num_workers=workers)
            return rate(loader, len)

        def full(workers: int, **loader_kw: Any) -> float:
            config = StreamConfig(resolution=RES, batch_size=BATCH, val_fraction=0.0)
            stream = TrainStream(PixelSource(shards, manifest), config,
                                 tokenizer=load_clip_tokenizer())  # fmt: skip
            loader = DataLoader(stream, batch_size=None, num_workers=workers, **loader_kw)
            return rate(loader, lambda b: len(b["captions"]))

        bare(0)  # warm the page cache
        by_workers, ratios, keep_ratios = {}, {}, {}
        for workers in (0, 1, 2):
            results = interleave(
                {"bare_decode_resize": lambda w=workers: bare(w),
                 "full_stream": lambda w=workers: full(w),
                 "full_stream_keep_batch": lambda w=workers: full(w, collate_fn=keep_batch)},
                repeats,
            )  # fmt: skip
            by_workers[str(workers)] = summarize(results)
            ratios[f"workers={workers}"] = paired_ratio(
                results, "full_stream", "bare_decode_resize"
            )
            keep_ratios[f"workers={workers}"] = paired_ratio(
                results, "full_stream_keep_batch", "bare_decode_resize"
            )
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "images": n_images,
            "source_size": 256,
            "resolution": RES,
            "batch": BATCH,
            "shards": len(shards),
            "multiply": "1 for every folder (one draw = one image)",
            "repeats": repeats,
        },  # fmt: skip
        "unit": "samples per second (median over repeats)",
        "figures": by_workers,
        "ratio": {f"full_stream / bare_decode_resize, {k}": v for k, v in ratios.items()},
        "ratio_informative": {
            f"full_stream_keep_batch / bare_decode_resize, {k}": v for k, v in keep_ratios.items()
        },
        "target": ">= 0.9 at every worker count",
        "met": all(v >= 0.9 for v in ratios.values()),
    }
