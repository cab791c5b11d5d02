"""Collect the runs of an ablation sweep into a table: mean ± 95 % t-interval over seeds per arm.

Each run directory (a Hydra sweep job) holds `config_resolved.yaml` (its `ablation.arm` and
`seed`), `probes/step_XXXXXX.json` (flat `probe/...` metrics and per-image records) and
`csv/metrics.csv` (`val/loss`, `perf/images_per_sec`). The last probe pass is the one reported.

    python -m experiments.ablations.collect NAME SWEEP_DIR [SWEEP_DIR ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

from ymn.run_dir import probe_pass_files

# (row label, metric key) in table order; keys ending in "/*" expand to every matching key.
METRICS: tuple[tuple[str, str], ...] = (
    ("count exact accuracy", "probe/count/exact_acc"),
    ("exact accuracy, asked {k}", "success/*"),
    ("mean detected, asked {k}", "probe/count/mean_detected/*"),
    ("detected − requested (mean)", "probe/count/signed_bias"),
    ("requested-vs-detected corr", "probe/count/corr"),
    ("character accuracy (identity)", "probe/identity/char_acc"),
    ("character accuracy, asked {k}", "probe/identity/char_acc/*"),
    ("character bleed rate", "probe/identity/bleed_rate"),
    ("character bleed rate, asked {k}", "probe/identity/bleed_rate/*"),
    ("character accuracy of a shuffled cast", "probe/identity/order_chance"),
    ("face-grid cell accuracy", "probe/facegrid/cell_acc"),
    ("grid chance", "probe/facegrid/chance"),
    ("attention mass in target (teacher-forced)", "probe/attn/grid_mass_in_target"),
    ("attention mass in target (samples)", "probe/attn/sample/grid_mass_in_target"),
    ("linear probe count acc, {k}", "probe/linear/count_acc/*"),
    ("linear probe count majority", "probe/linear/count_majority"),
    ("val loss (final)", "val/loss"),
    ("images/s (mean)", "perf/images_per_sec"),
)
CAVEAT = (
    "Toy-scale CPU numbers from a few steps are not evidence: meaningful count ablations need "
    ">= 128 samples per count and 1-2 CPU-hours per arm (see the studies, experiments/FINDINGS.md)."
)


@dataclass
class RunResult:
    """One run's arm, seed and scalar metrics."""

    arm: str
    seed: int
    path: str
    metrics: dict[str, float] = field(default_factory=dict)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, half-width of the two-sided t-interval (None for n < 2), n and the values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0, "values": []}
    mean = sum(finite) / n
    half = None
    if n >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return {"mean": mean, "ci95": half, "n": n, "values": finite}


def last_probe_file(run_dir: Path) -> Path | None:
    """The probe JSON with the highest step, or None when the run wrote none."""
    files = probe_pass_files(run_dir)
    return files[-1] if files else None


def success_by_count(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Exact count accuracy per requested count ("success vs count") from probe records."""
    hits: dict[int, list[bool]] = {}
    for record in records:
        count = record.get("count")
        if isinstance(count, int):
            hits.setdefault(count, []).append(record.get("detected_count") == count)
    return {f"success/{k}": sum(v) / len(v) for k, v in sorted(hits.items())}


def csv_metrics(path: Path) -> dict[str, float]:
    """The last logged `val/loss` and the mean `perf/images_per_sec` of a CSVLogger file."""
    if not path.is_file():
        return {}
    last_val, speeds = None, []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("val/loss"):
                last_val = float(row["val/loss"])
            if row.get("perf/images_per_sec"):
                speeds.append(float(row["perf/images_per_sec"]))
    out = {} if last_val is None else {"val/loss": last_val}
    if speeds:
        out["perf/images_per_sec"] = sum(speeds) / len(speeds)
    return out


def read_run(run_dir: Path) -> RunResult:
    """A run's arm/seed (from config_resolved.yaml) and its final metrics."""
    config_file = run_dir / "config_resolved.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {run_dir} is not a finished ymn run")
    cfg = yaml.safe_load(config_file.read_text())
    arm = str((cfg.get("ablation") or {}).get("arm", "default"))
    metrics: dict[str, float] = {}
    probe_file = last_probe_file(run_dir)
    if probe_file is not None:
        probe = json.loads(probe_file.read_text())
        flat = probe.get("metrics", {})
        metrics |= {k: float(v) for k, v in flat.items() if isinstance(v, int | float)}
        metrics |= success_by_count(probe.get("records", []))
    metrics |= csv_metrics(run_dir / "csv" / "metrics.csv")
    return RunResult(arm, int(cfg.get("seed", 0)), str(run_dir), metrics)


def find_runs(sweep_dirs: Iterable[Path]) -> list[Path]:
    """Run directories (those holding config_resolved.yaml) directly under each sweep dir."""
    runs = []
    for sweep in sweep_dirs:
        runs += sorted(p.parent for p in Path(sweep).glob("*/config_resolved.yaml"))
    return runs


def _row_label(label: str, key: str, pattern: str) -> str:
    if not pattern.endswith("/*"):
        return label
    k = key[len(pattern) - 1 :]
    return label.format(k=k[1:] if re.fullmatch(r"n\d+", k) else k)  # identity keys: n3 -> 3


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def metric_rows(runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    """(label, key) for every table metric present in at least one run, in METRICS order."""
    keys = sorted({k for run in runs for k in run.metrics}, key=_natural)
    rows = []
    for label, pattern in METRICS:
        if pattern.endswith("/*"):
            prefix = pattern[:-1]
            matched = [k for k in keys if k.startswith(prefix) and "/shuffled/" not in k]
            rows += [(_row_label(label, k, pattern), k) for k in matched]
        elif pattern in keys:
            rows.append((label, pattern))
    return rows


def summarize(runs: Sequence[RunResult]) -> dict[str, Any]:
    """{arm: {"seeds": [...], "metrics": {key: t_interval}}} in first-seen arm order."""
    arms: dict[str, list[RunResult]] = {}
    for run in runs:
        arms.setdefault(run.arm, []).append(run)
    rows = metric_rows(runs)
    return {
        arm: {
            "seeds": sorted(r.seed for r in members),
            "runs": [r.path for r in members],
            "metrics": {key: t_interval([r.metrics.get(key) for r in members]) for _, key in rows},
        }
        for arm, members in arms.items()
    }


def _cell(stat: Mapping[str, Any]) -> str:
    if stat["mean"] is None:
        return "–"
    ci = "" if stat["ci95"] is None else f" ± {stat['ci95']:.3g}"
    return f"{stat['mean']:.3g}{ci} (n={stat['n']})"


def render_markdown(
    name: str,
    summary: Mapping[str, Any],
    rows: Sequence[tuple[str, str]],
    notes: Sequence[str] = (),
) -> str:
    """The Markdown report: caveat, notes, one table (rows: metrics, columns: arms)."""
    arms = list(summary)
    lines = [f"# Ablation: {name}", "", f"**{CAVEAT}**", ""]
    lines += [f"- {note}" for note in notes]
    lines += [
        "",
        "Cells: mean ± half-width of the 95 % t-interval over seeds (n = number of seeds; no "
        "interval when n = 1). Probe metrics are from each run's last probe pass.",
        "",
        "| metric | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for label, key in rows:
        cells = [_cell(summary[arm]["metrics"][key]) for arm in arms]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = ", ".join(f"{arm}: {summary[arm]['seeds']}" for arm in arms)
    lines += ["", f"Seeds per arm: {seeds}.", ""]
    return "\n".join(lines)


def write_tables(
    name: str, runs: Sequence[RunResult], out_dir: Path, notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write out_dir/NAME.md and out_dir/NAME.json; return their paths."""
    if not runs:
        raise ValueError(f"ablation {name}: no finished runs to collect (none had config_resolved)")
    summary, rows = summarize(runs), metric_rows(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{name}.md", out_dir / f"{name}.json"
    md.write_text(render_markdown(name, summary, rows, notes))
    payload = {
        "name": name,
        "caveat": CAVEAT,
        "notes": list(notes),
        "arms": summary,
        "rows": [list(r) for r in rows],
    }
    js.write_text(json.dumps(payload, indent=2) + "\n")
    return md, js


def main(argv: list[str] | None = None) -> int:
    """CLI: collect NAME SWEEP_DIR... into experiments/ablations/NAME.{md,json}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("sweep_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    runs = [read_run(p) for p in find_runs(args.sweep_dirs)]
    md, _ = write_tables(args.name, runs, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
