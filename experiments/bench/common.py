"""Shared benchmark plumbing: machine record, interleaved repeats, medians, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ymn.run_record import commit_label

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent.parent
NO_GPU = "none: CPU figures only"


def setup_torch(threads: int = 1) -> None:
    """Fixed thread count so arms compare on equal footing; offline hubs."""
    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where and with what the figures were taken."""
    import diffusers
    import lightning
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else NO_GPU
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "git_commit": commit_label(),
        "load_average_at_start": list(os.getloadavg()),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleave(arms: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every arm once per repeat, alternating the order (ABAB, then BABA...), so a change
    in machine load hits every arm alike. Each arm returns its figure for that repeat."""
    names = list(arms)
    results: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(float(arms[name]()))
    return results


def summarize(results: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """{arm: {median, min, max, repeats}}."""
    return {
        name: {"median": median(v), "min": min(v), "max": max(v), "repeats": v}
        for name, v in results.items()
    }


def paired_ratio(results: dict[str, list[float]], arm: str, baseline: str) -> float:
    """Median over repeats of arm/baseline taken repeat by repeat (side by side)."""
    return median([a / b for a, b in zip(results[arm], results[baseline], strict=True)])


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def write_result(name: str, payload: dict[str, Any], out_dir: Path = BENCH_DIR) -> Path:
    """Write `out_dir/<name>.json` with the machine record."""
    path = out_dir / f"{name}.json"
    record = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(record, indent=1, default=float) + "\n", encoding="utf-8")
    return path


def synthetic_shards(root: Path, n: int, size: int, shard_size: int = 100) -> Path:
    """`generate_dataset` + `pack_folder` in `root`, every folder's multiply 1 (so one draw is
    one image and stream vs bare decode compare per image). Returns the shard folder."""
    from ymn.data.balance import is_image
    from ymn.data.pack import pack_folder
    from ymn.data.synthetic import generate_dataset

    images, shards = root / "images", root / "shards"
    if not (shards / "manifest.json").is_file():
        generate_dataset(images, n=n, seed=0, size=size)
        for folder in {p.parent for p in images.rglob("*") if p.is_file() and is_image(p)}:
            (folder / "multiply.txt").write_text("1")
        pack_folder(images, shards, shard_size=shard_size, progress=False)
    return shards
