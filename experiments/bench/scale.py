"""scale: `ymn-balance` (compute_weights) and epoch planning (plan_epoch + epoch_size, and every
sample's draws_for_sample) on the real 35,817-image tree and on a 1M-image synthetic tree, and
the loader's peak RSS with a 10k- vs a 1M-image manifest (subprocesses; must stay flat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from experiments.bench.common import REPO, Timer, median, setup_torch, synthetic_shards

PER_FOLDER = 200  # mean images per folder of the synthetic 1M tree (100/200/300)


def synthetic_tree(root: Path, n_images: int) -> list[dict[str, Any]]:
    """Rows for `build_tree`: n_images empty files, PER_FOLDER a folder, in a 3-level tree."""
    sizes = (PER_FOLDER // 2, PER_FOLDER, PER_FOLDER * 3 // 2)  # uneven: multiplies differ
    return [
        {"dir": f"g{i % 10}/s{i % 97}/f{i:05d}", "n_images": sizes[i % 3]}
        for i in range(n_images // PER_FOLDER)
    ]


def time_planning(root: Path, repeats: int) -> dict[str, Any]:
    """Median seconds of compute_weights, plan_epoch (ed1, ed2) + epoch_size, all draws."""
    from ymn.data.balance import compute_weights
    from ymn.data.multiply import draws_for_sample, epoch_size, plan_epoch

    balance, plans, draws = [], {"ed1": [], "ed2": []}, []
    for _ in range(repeats):
        with Timer() as t:
            weights = compute_weights(root)
        balance.append(t.seconds)
        categories = {k: (w.n_images, w.multiply_raw) for k, w in weights.items()}
        for mode in plans:
            with Timer() as t:
                size = epoch_size(plan_epoch(categories, mode, seed=0, epoch=1))
            plans[mode].append(t.seconds)
        plan = plan_epoch(categories, "ed2", seed=0, epoch=1)
        with Timer() as t:
            total = sum(draws_for_sample(c, i, p, 0, 1) for c, p in plan.items()
                        for i in range(p.n_images))  # fmt: skip
        draws.append(t.seconds)
    return {
        "images": sum(w.n_images for w in weights.values()),
        "folders": len(weights),
        "epoch_size_ed2": size,
        "draws_counted": total,
        "balance_s": median(balance),
        "plan_epoch_ed1_s": median(plans["ed1"]),
        "plan_epoch_ed2_s": median(plans["ed2"]),
        "draws_for_every_sample_ed2_s": median(draws),
    }


RSS_CHILD = """
import json, resource, sys
from ymn.data.decode import resolve_shards
from ymn.data.pixels import PixelSource
from ymn.data.sample_source import StreamConfig
from ymn.data.stream import TrainStream
shards, manifest = resolve_shards(sys.argv[1])
n_images, per = int(sys.argv[2]), 50
real = sum(c["n_images"] for c in manifest["categories"].values())
for i in range((n_images - real) // per):  # padding categories the shards never reach
    manifest["categories"][f"pad/{i:06d}"] = {"n_images": per, "multiply": 1.5, "prob": 0.0}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stream = TrainStream(PixelSource(shards, manifest),
                     StreamConfig(resolution=128, batch_size=8, multiply_mode="ed2",
                                  val_fraction=0.0))
batches = sum(1 for _ in stream) + sum(1 for _ in stream)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"manifest_images": sum(c["n_images"] for c in manifest["categories"].values()),
                  "categories": len(manifest["categories"]), "batches": batches,
                  "rss_before_stream_mb": before / 1024, "peak_rss_mb": peak / 1024}))
"""


def loader_rss(shards: Path, n_images: int) -> dict[str, Any]:
    """Peak RSS of a fresh process that streams two epochs with an n_images manifest."""
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(shards), str(n_images)],
                         capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict[str, Any]:
    """Real tree, 1M tree (100k in --quick), RSS at 10k vs 1M."""
    setup_torch()
    sys.path.insert(0, str(REPO))
    from tests.fixture_tree import build_tree

    big, repeats = (100_000, 1) if quick else (1_000_000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        real_root, big_root = Path(tmp) / "real", Path(tmp) / "big"
        build_tree(real_root)
        real = time_planning(real_root, repeats)
        with Timer() as t_build:
            build_tree(big_root, synthetic_tree(big_root, big))
        large = time_planning(big_root, repeats)
        large["tree_build_s"] = t_build.seconds
        shards = synthetic_shards(Path(tmp) / "shards", n=64, size=128, shard_size=32)
        rss = {str(n): loader_rss(shards, n) for n in (10_000, 1_000_000)}
    growth = rss["1000000"]["peak_rss_mb"] - rss["10000"]["peak_rss_mb"]
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "real_tree": "tests/fixture_tree.build_tree (multiply_log.json)",
            "synthetic_tree_images": big,
            "per_folder": PER_FOLDER,
            "rss": "64 real images in shards; manifest padded with 50-image categories "
            "to the size; ED2 mode; two epochs streamed",
            "repeats": repeats,
        },
        "unit": "seconds; MB",
        "figures": {"real_35817": real, f"synthetic_{big}": large, "loader_rss": rss},
        "ratio": {
            "balance_s on real tree (target < 5 s)": real["balance_s"],
            "peak RSS MB 1M / 10k manifest": rss["1000000"]["peak_rss_mb"]
            / rss["10000"]["peak_rss_mb"],
        },
        "rss_growth_mb_10k_to_1M": growth,
        "target": "balance on the real tree < 5 s; RSS flat (growth < 64 MB)",
        "met": real["balance_s"] < 5 and growth < 64,
    }
