"""Load ymn run directories and plot them side by side (phase 1 vs phase 2, ablation arms).

A run directory (ymn.train) holds `config_resolved.yaml`, `csv/metrics.csv` (Lightning's
CSVLogger: `train/loss`, `val/loss`, `probe/...`), `probes/step_XXXXXX.json` (+ confusion
PNGs), `samples/step_XXXXXX.png` and, with the wandb logger, `wandb/offline-run-*/`. Metrics
are merged from all three sources (CSV first; the probe JSONs and the wandb log fill what the
CSV lacks), so a run with only one of them still loads. Plain dicts and numpy, no pandas.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ymn.analysis.wandb_files import fetch_online_runs, load_offline_run, offline_run_dirs

log = logging.getLogger(__name__)
STEP_FILE = re.compile(r"step_(\d+)\.(png|json)$")
RUN_MARKERS = ("config_resolved.yaml", "csv", "probes", "samples", "wandb")
NOT_RUNS = {"wandb", "export", "checkpoints", ".git", ".hydra", "csv", "probes", "samples"}
# The probe families (count, face grid, identity, attention, linear) by metric prefix.
PROBE_FAMILIES = {
    "count": ("probe/count/",),
    "facegrid": ("probe/facegrid/",),
    "attn": ("probe/attn/",),
    "linear": ("probe/linear/",),
}


@dataclass
class RunData:
    """One run: config, metrics (key → step → value) and the files a comparison shows.

    probe_reports / samples / confusions: step → file. wandb_images: wandb image key → step →
    files (from an offline wandb log, e.g. "samples"). sources: what was read, for the reader.
    """

    label: str
    path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    probe_reports: dict[int, Path] = field(default_factory=dict)
    samples: dict[int, Path] = field(default_factory=dict)
    confusions: dict[int, Path] = field(default_factory=dict)
    wandb_images: dict[str, dict[int, list[Path]]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- loading


def read_metrics_csv(path: Path) -> dict[str, dict[int, float]]:
    """Lightning CSVLogger rows → key → step → value (empty cells skipped; later rows win)."""
    metrics: dict[str, dict[int, float]] = {}
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if not row.get("step"):
                raise ValueError(f"{path}:{line}: no 'step' value; is this a CSVLogger file?")
            step = int(float(row["step"]))
            for key, cell in row.items():
                if key != "step" and cell not in ("", None):
                    metrics.setdefault(key, {})[step] = float(cell)
    return metrics


def step_files(folder: Path, pattern: str) -> dict[int, Path]:
    """`folder/<pattern>` files named ..step_XXXXXX.ext → step → path."""
    found = {}
    for path in folder.glob(pattern):
        match = STEP_FILE.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def read_probe_metrics(reports: dict[int, Path]) -> dict[str, dict[int, float]]:
    """The flat `metrics` of each probe JSON report → key → step → value (None/NaN skipped)."""
    metrics: dict[str, dict[int, float]] = {}
    for step, path in reports.items():
        report = json.loads(path.read_text())
        for key, value in (report.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics.setdefault(key, {})[int(report.get("step", step))] = float(value)
    return metrics


def merge_metrics(base: dict[str, dict[int, float]], extra: dict[str, dict[int, float]]) -> None:
    """Add to `base` the (key, step) points it lacks; `base` wins where both have one."""
    for key, points in extra.items():
        target = base.setdefault(key, {})
        for step, value in points.items():
            target.setdefault(step, value)


def read_config(run_dir: Path) -> dict[str, Any]:
    """`config_resolved.yaml` as a dict ({} when absent)."""
    path = run_dir / "config_resolved.yaml"
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def load_run(run_dir: str | Path, label: str | None = None, wandb: bool = True) -> RunData:
    """Read one run directory (any subset of CSV, probe JSON, samples, wandb offline log)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run directory {run_dir} does not exist; give a ymn run dir")
    run = RunData(label=label or run_dir.name, path=run_dir, config=read_config(run_dir))
    for path in sorted(run_dir.glob("csv/**/metrics.csv")):
        merge_metrics(run.metrics, read_metrics_csv(path))
        run.sources.append(str(path.relative_to(run_dir)))
    run.probe_reports = step_files(run_dir / "probes", "step_*.json")
    if run.probe_reports:
        merge_metrics(run.metrics, read_probe_metrics(run.probe_reports))
        run.sources.append(f"probes/ ({len(run.probe_reports)} JSON)")
    run.samples = step_files(run_dir / "samples", "step_*.png")
    run.confusions = step_files(run_dir / "probes", "confusion_step_*.png")
    for offline in offline_run_dirs(run_dir) if wandb else []:
        data = load_offline_run(offline)
        merge_metrics(run.metrics, data["scalars"])
        run.wandb_images |= data["images"]
        run.config = run.config or data["config"]
        run.sources.append(str(offline.relative_to(run_dir)))
    if not run.sources and not run.samples:
        log.warning("%s holds no metrics.csv, probes/, samples/ or wandb run", run_dir)
    return run


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under `root` (itself included), sorted; their insides are not searched."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist; set RUNS_ROOT / YMN_RUNS_ROOT to runs")
    found = []
    for folder, subdirs, _files in os.walk(root):
        here = Path(folder)
        if any((here / marker).exists() for marker in RUN_MARKERS):
            found.append(here)
            subdirs.clear()
        else:
            subdirs[:] = sorted(d for d in subdirs if d not in NOT_RUNS)
    return sorted(found)


def resolve_root(path: str | Path) -> Path:
    """A relative runs root as given if it exists, else relative to the repository root.

    (A notebook runs in notebooks/, while `runs/demo` is relative to the repository.)
    """
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return Path(__file__).resolve().parents[2] / path


def load_runs(root: str | Path) -> list[RunData]:
    """Every run under `root`, labelled by its path relative to `root`."""
    root = Path(root)
    return [
        load_run(p, label=str(p.relative_to(root)) if p != root else p.name)
        for p in find_runs(root)
    ]


def load_wandb_online(path: str, filters: dict[str, Any] | None = None) -> list[RunData]:
    """Runs of wandb project `entity/project` via the API; [] when offline or unreachable."""
    return [
        RunData(
            label=r["name"], config=r["config"], metrics=r["scalars"], sources=[f"wandb:{path}"]
        )
        for r in fetch_online_runs(path, filters)
    ]


# ----------------------------------------------------------------------------- queries


def metric_series(run: RunData, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric, sorted by step."""
    if key not in run.metrics:
        raise KeyError(f"Run {run.label!r} has no metric {key!r}; it has {sorted(run.metrics)}")
    steps = sorted(run.metrics[key])
    values = [run.metrics[key][s] for s in steps]
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def metric_keys(runs: Iterable[RunData], prefix: str = "") -> list[str]:
    """Sorted metric names starting with `prefix` that any of the runs has."""
    return sorted({k for run in runs for k in run.metrics if k.startswith(prefix)})


def family_keys(runs: Iterable[RunData], family: str) -> list[str]:
    """Metric names of one probe family ("count", "facegrid", "attn", "linear")."""
    if family not in PROBE_FAMILIES:
        raise KeyError(f"Unknown probe family {family!r}; choose from {sorted(PROBE_FAMILIES)}")
    runs = list(runs)
    return [k for prefix in PROBE_FAMILIES[family] for k in metric_keys(runs, prefix)]


def sample_grids(run: RunData) -> list[tuple[int, Path]]:
    """(step, grid PNG) of the run's sample grids, by step."""
    return sorted(run.samples.items())


def last_values(runs: Sequence[RunData], keys: Sequence[str]) -> list[list[Any]]:
    """A table: one row per run, its label then the value of each key at its last step."""
    rows = []
    for run in runs:
        values = run.metrics
        rows.append(
            [run.label, *[values[k][max(values[k])] if values.get(k) else None for k in keys]]
        )
    return rows


def step_offsets(runs: Sequence[RunData], chain: bool) -> list[int]:
    """With chain, each run starts where the previous one's last step ended (phase 1 → 2)."""
    offsets, total = [], 0
    for run in runs:
        offsets.append(total if chain else 0)
        total += max((max(points) for points in run.metrics.values() if points), default=0)
    return offsets


# ----------------------------------------------------------------------------- plots


def plot_metric(runs: Sequence[RunData], key: str, ax: Any = None, chain: bool = False) -> Any:
    """One line per run that has `key` (points marked: probes are sparse); returns the Axes."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.2))[1]
    plotted = 0
    for run, offset in zip(runs, step_offsets(runs, chain), strict=True):
        if run.metrics.get(key):
            steps, values = metric_series(run, key)
            ax.plot(steps + offset, values, marker="o", markersize=3, label=run.label)
            plotted += 1
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step (chained)" if chain else "step")
    if plotted:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return ax


def plot_metrics(
    runs: Sequence[RunData], keys: Sequence[str], columns: int = 3, chain: bool = False
) -> Any:
    """A grid of `plot_metric` panels, one per key; returns the Figure."""
    import matplotlib.pyplot as plt

    keys = list(keys) or ["(none)"]
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        plot_metric(runs, key, ax=ax, chain=chain)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _pick(items: dict[int, Any], which: str | int) -> tuple[int, Any] | None:
    if not items:
        return None
    steps = sorted(items)
    step = {"first": steps[0], "last": steps[-1]}.get(which, which)  # type: ignore[arg-type]
    return (int(step), items[step]) if step in items else None


def _image(files: Path | list[Path]) -> np.ndarray:
    """One image, or separate images tiled in a row."""
    from PIL import Image

    paths = files if isinstance(files, list) else [files]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    height = max(im.shape[0] for im in images)
    padded = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0))) for im in images]
    return np.concatenate(padded, axis=1)


def plot_images(
    runs: Sequence[RunData], kind: str = "samples", which: Sequence[str | int] = ("first", "last")
) -> Any:
    """Images side by side: a row per run, a column per step choice ("first", "last", a step).

    kind: "samples" (the sample grids; wandb's logged samples when the run dir has none) or
    "confusions" (the count confusion matrices).
    """
    import matplotlib.pyplot as plt

    if kind not in ("samples", "confusions"):
        raise ValueError(f"plot_images: kind must be samples|confusions, got {kind!r}")
    cells = [[_pick(_images_of(run, kind), choice) for choice in which] for run in runs]
    images = {id(c): _image(c[1]) for row in cells for c in row if c is not None}
    aspect = max((im.shape[0] / im.shape[1] for im in images.values()), default=0.75)
    width = 4.5
    fig, axes = plt.subplots(
        max(1, len(runs)),
        len(which),
        squeeze=False,
        figsize=(width * len(which), (width * aspect + 0.4) * max(1, len(runs))),
    )
    for axes_row, run, row in zip(axes, runs, cells, strict=False):
        for ax, choice, cell in zip(axes_row, which, row, strict=True):
            ax.axis("off")
            if cell is None:
                ax.set_title(f"{run.label}: no {kind} ({choice})", fontsize=8)
                continue
            ax.imshow(images[id(cell)])
            ax.set_title(f"{run.label} — step {cell[0]}", fontsize=8)
    fig.tight_layout()
    return fig


def _images_of(run: RunData, kind: str) -> dict[int, Any]:
    items: dict[int, Any] = getattr(run, kind)
    if not items and kind == "samples":
        return run.wandb_images.get("samples", {})
    return items
