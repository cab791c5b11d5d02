"""A study's results: RESULTS.md, results.json and three pictures, regenerated from its runs.

learning_curves.png   every reported metric per arm over training steps (mean over seeds)
count.png             mean detected vs requested count per arm, 95 % CIs, the y = x line
cells.png             per target cell, the share of faces drawn in it, one 5x5 map per arm
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.study.readings import METRICS, RunReading, columns  # noqa: E402
from experiments.study.spec import StudySpec  # noqa: E402
from experiments.study.stats import paired_difference, pooled_interval, t_interval  # noqa: E402
from ymn.probes.facegrid import chebyshev, grid_cell, match_cells  # noqa: E402
from ymn.probes.scores import GRID  # noqa: E402

CAVEAT = (
    "Toy scale: a tiny SD-shaped model on synthetic scenes. A difference here says what this "
    "recipe does to this model's readings; whether SD 1.5 on real data moves the same way is "
    "what the full-scale command below measures."
)


def _pooled(runs: Sequence[RunReading]) -> dict[str, np.ndarray]:
    parts = [r.terms for r in runs]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def summarize(
    spec: StudySpec, readings: Sequence[RunReading], walls: Mapping[str, list[float]]
) -> dict[str, Any]:
    """Per arm: seeds, images, per-metric seed CI and pooled value, and the paired difference
    to the baseline (bootstrap CI, permutation p)."""
    by_arm = {arm: [r for r in readings if r.arm == arm] for arm in spec.arms}
    baseline = by_arm[spec.baseline]
    out: dict[str, Any] = {}
    for arm, runs in by_arm.items():
        if not runs:
            continue
        pooled = _pooled(runs)
        entry = {
            "seeds": sorted(r.seed for r in runs),
            "images": int(len(pooled["asked"])),
            "images_per_count": {
                str(int(k)): int(v)
                for k, v in zip(*np.unique(pooled["asked"], return_counts=True), strict=True)
            },
            "wall_s_per_run": float(np.mean(walls[arm])) if walls.get(arm) else None,
            "metrics": {},
        }
        for metric in spec.metrics:
            fn = METRICS[metric][1]
            row = {
                "over_seeds": t_interval([r.value(metric) for r in runs]),
                "per_seed": {str(r.seed): _finite(r.value(metric)) for r in runs},
                "pooled": _finite(fn(pooled)),
                "pooled_ci95": pooled_interval(metric, runs),
            }
            if arm != spec.baseline and baseline:
                row["vs_baseline"] = paired_difference(metric, runs, baseline)
            entry["metrics"][metric] = row
        out[arm] = entry
    return out


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _seed_cell(stat: Mapping[str, Any]) -> str:
    if stat["mean"] is None:
        return "–"
    ci = "" if stat["ci95"] is None else f" ± {stat['ci95']:.3f}"
    return f"{stat['mean']:.3f}{ci}"


def pooled_cell(row: Mapping[str, Any]) -> str:
    """A pooled value with its bootstrap CI: `0.384 [0.347, 0.420]`."""
    ci = row.get("pooled_ci95")
    return _fmt(row["pooled"]) + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def diff_cell(diff: Mapping[str, Any] | None) -> str:
    """A paired difference: `-0.089 [-0.139, -0.042], p = 0.001`, then with several training
    seeds each seed's own difference (`; seeds +0.012 / -0.151`); – when none."""
    if not diff or diff.get("diff") is None:
        return "–"
    low, high = diff["ci95"]
    interval = f"[{_fmt_signed(low)}, {_fmt_signed(high)}]"
    cell = f"{_fmt_signed(diff['diff'])} {interval}, p = {diff['p']:.3g}"
    per_seed = diff.get("per_seed") or {}
    if len(per_seed) >= 2:
        cell += "; seeds " + " / ".join(_fmt_signed(v) for v in per_seed.values())
    return cell


def _fmt_signed(value: float | None) -> str:
    """+0.012; a nonzero value that would print as ±0.000 keeps two significant digits."""
    if value is None:
        return "n/a"
    return f"{value:+.1e}" if 1e-12 < abs(value) < 5e-4 else f"{value:+.3f}"


def _size(entry: Mapping[str, Any]) -> str:
    seeds = len(entry["seeds"])
    return f"{seeds} seeds × {entry['images'] // max(seeds, 1)} probe images"


def steps_line(spec: StudySpec, arms: Sequence[str]) -> str:
    """'600 steps each', or each arm's own steps (and the arm it starts from)."""
    if not any(a in spec.arm_steps or a in spec.arm_after for a in arms):
        return f"{spec.steps} steps each"

    def one(arm: str) -> str:
        after = f" after {spec.arm_after[arm]}" if arm in spec.arm_after else ""
        return f"{arm} {spec.steps_of(arm)}{after}"

    return "steps: " + ", ".join(one(a) for a in arms)


def render(spec: StudySpec, summary: Mapping[str, Any], command: str) -> str:
    """RESULTS.md: question, caveat, how it was run, one table per metric, cost, full command."""
    lines = [f"# Study: {spec.name}", "", spec.question, "", f"*{CAVEAT}*", ""]
    lines += [f"Regenerate: `{command}` (definition: `{spec.source}`).", ""]
    lines += [f"- {note}" for note in spec.notes]
    arms = list(summary)
    sizes = ", ".join(f"{a}: {_size(summary[a])}" for a in arms)
    lines += [
        f"- Runs: {sizes}; {steps_line(spec, arms)}; baseline arm `{spec.baseline}`.",
        "- *over seeds*: mean ± half-width of the 95 % t-interval of the per-seed values. "
        "*pooled*: all images of the arm. *vs baseline*: pooled difference, paired bootstrap "
        "95 % CI over images (within training seed), two-sided paired permutation p (2000 draws).",
        "",
    ]
    for metric in spec.metrics:
        lines += [
            f"### {METRICS[metric][0]} (`{metric}`)",
            "",
            "| arm | over seeds | pooled | vs baseline |",
            "|---|---|---|---|",
        ]
        for arm in arms:
            row = summary[arm]["metrics"][metric]
            cells = [_seed_cell(row["over_seeds"]), pooled_cell(row)]
            cells.append(diff_cell(row.get("vs_baseline")))
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    cost = ", ".join(
        f"{a}: {summary[a]['wall_s_per_run'] / 60:.1f} min"
        for a in arms
        if summary[a]["wall_s_per_run"]
    )
    lines += [
        f"Measured cost per run (one CPU core each; runs resumed after a kill left out): "
        f"{cost or 'not recorded'}.",
        "",
    ]
    if spec.full_command:
        lines += [
            "Full scale (SD 1.5, real shards; paths are examples):",
            "",
            "```",
            spec.full_command,
            "```",
            "",
        ]
    lines += ["Pictures: `learning_curves.png`, `count.png`, `cells.png`.", ""]
    return "\n".join(lines)


def plot_curves(spec: StudySpec, readings: Sequence[RunReading], path: Path) -> None:
    metrics = spec.metrics[:6]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for arm in spec.arms:
            runs = [r for r in readings if r.arm == arm]
            steps = sorted({s for r in runs for s in r.curve})
            if not steps:
                continue
            means = [np.nanmean([r.curve[s][metric] for r in runs if s in r.curve]) for s in steps]
            ax.plot(steps, means, marker="o", label=arm)
        ax.set_title(METRICS[metric][0], fontsize=8)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_counts(spec: StudySpec, readings: Sequence[RunReading], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    top = 1
    for i, arm in enumerate(spec.arms):
        runs = [r for r in readings if r.arm == arm]
        if not runs:
            continue
        pooled = _pooled(runs)
        asked = np.unique(pooled["asked"])
        top = max(top, int(asked.max()))
        means, halves = [], []
        for k in asked:
            stat = t_interval(list(pooled["detected"][pooled["asked"] == k]))
            means.append(stat["mean"])
            halves.append(stat["ci95"] or 0.0)
        ax.errorbar(
            asked + 0.06 * (i - len(spec.arms) / 2),
            means,
            yerr=halves,
            marker="o",
            capsize=3,
            label=arm,
        )
    ax.plot([1, top], [1, top], color="grey", linestyle="--", linewidth=1, label="detected = asked")
    ax.set_xlabel("requested people")
    ax.set_ylabel("detected people (mean, 95 % CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell_accuracy(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """5x5 map (row, col) of the share of target faces drawn in their cell (NaN: no target)."""
    hits, totals = np.zeros((GRID, GRID)), np.zeros((GRID, GRID))
    for record in records:
        found = [grid_cell(b, GRID) for b in record.get("detected_boxes") or []]
        for target, match in match_cells(record.get("cells") or [], found):
            col, row = target
            totals[row, col] += 1
            hits[row, col] += match is not None and chebyshev(target, match) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / totals, np.nan)


def plot_cells(spec: StudySpec, readings: Sequence[RunReading], path: Path) -> None:
    arms = [a for a in spec.arms if any(r.arm == a for r in readings)]
    fig, axes = plt.subplots(1, len(arms), figsize=(2.6 * len(arms), 2.8), squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        records = [rec for r in readings if r.arm == arm for rec in r.records]
        image = ax.imshow(cell_accuracy(records), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(arm, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="cell accuracy")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(
    spec: StudySpec,
    readings: Sequence[RunReading],
    walls: Mapping[str, list[float]],
    out_dir: Path,
    command: str,
) -> Path:
    """Write RESULTS.md, results.json and the pictures; return the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(spec, readings, walls)
    payload = {
        "study": spec.name,
        "source": spec.source,
        "steps": spec.steps,
        "baseline": spec.baseline,
        "metrics": spec.metrics,
        "arms": summary,
        "caveat": CAVEAT,
        "command": command,
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot_curves(spec, readings, out_dir / "learning_curves.png")
    plot_counts(spec, readings, out_dir / "count.png")
    plot_cells(spec, readings, out_dir / "cells.png")
    md = out_dir / "RESULTS.md"
    md.write_text(render(spec, summary, command))
    return md


__all__ = ["write_results", "summarize", "cell_accuracy", "columns"]
