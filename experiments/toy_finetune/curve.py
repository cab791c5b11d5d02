"""The toy fine-tune's learning curve: every probe pass of a run, read with intervals.

    python -m experiments.toy_finetune.curve RUN_DIR [--out experiments/toy_finetune]

For each probe pass (`RUN_DIR/probes/step_*.json`) the headline readings of
`ymn.probes.scores.headline_readings` — the named lead drawn in `1person, <name>` images, exact
count, face-grid cell, identity — each with k, n and its 95 % interval, plus exact count per
requested count. The last pass is compared with every earlier one on the same probe images
(same prompt, layout and sampling seed): a bootstrap 95 % CI and a paired permutation p-value
of the difference. Writes `curve.json` and `curve.png`.

    python -m experiments.toy_finetune.curve RUN_DIR --against OTHER_RUN [MORE ...] --out DIR

also pairs each pass with OTHER_RUN's pass at the same step on the same images
(`minus_against`: RUN_DIR − OTHER_RUN), e.g. EMA weights against the raw weights of the same
training trajectory, or one training seed or caption arm against another. MORE: further folders
of OTHER_RUN's passes (e.g. `select.py`'s RUN/select/validation), the first folder winning a
step two hold.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.probes.vae_ceiling import paired_difference
from ymn.probes.rates import rate
from ymn.probes.scores import format_reading, headline_readings, record_scores
from ymn.run_dir import probe_pass_files

PAIRED_READINGS = ("lead drawn (1person, <name>)", "count exact", "face-grid cell", "identity")


def read_passes(run_dir: Path) -> list[dict[str, Any]]:
    """The run's probe passes in step order; FileNotFoundError when it wrote none."""
    paths = probe_pass_files(run_dir)
    if not paths:
        raise FileNotFoundError(f"{run_dir}/probes: no step_*.json; did the run write probes?")
    return [json.loads(p.read_text()) for p in paths]


def image_key(record: Mapping[str, Any]) -> tuple:
    """What makes two passes' images a pair: the same prompt, layout and sampling seed."""
    return (record["prompt"], record.get("layout"), record["seed"])


Rows = list[dict[str, float]]  # one record_scores row per probe image


def per_image(rows: Rows) -> dict[str, tuple[list[int], list[int]]]:
    """(hits, totals) per image of each paired reading (the lead only in one-person images)."""

    def column(key: str) -> list[int]:
        return [int(r[key]) for r in rows]

    solo = [int(r["asked"] == 1) for r in rows]
    return {
        PAIRED_READINGS[0]: (
            [c * s for c, s in zip(column("id_correct"), solo, strict=True)],
            solo,
        ),
        PAIRED_READINGS[1]: (column("exact"), [1] * len(rows)),
        PAIRED_READINGS[2]: (column("cell_hits"), column("cell_targets")),
        PAIRED_READINGS[3]: (column("id_correct"), column("id_matched")),
    }


def by_asked(rows: Rows) -> dict[int, Rows]:
    """The rows grouped by requested count, in count order."""
    groups: dict[int, Rows] = {}
    for row in rows:
        groups.setdefault(int(row["asked"]), []).append(row)
    return dict(sorted(groups.items()))


def exact_by_count(rows: Rows) -> dict[str, dict[str, Any]]:
    """Exact count accuracy (k, n, Wilson CI) for each requested count."""
    return {
        str(k): rate(sum(int(r["exact"]) for r in g), len(g)) for k, g in by_asked(rows).items()
    }


def detected_by_count(rows: Rows) -> dict[str, float]:
    """Mean number of detected faces for each requested count."""
    return {str(k): sum(r["detected"] for r in g) / len(g) for k, g in by_asked(rows).items()}


def same_images(a: Sequence[Mapping], b: Sequence[Mapping]) -> bool:
    """Whether two passes asked the same images in the same order (so they pair)."""
    return [image_key(r) for r in a] == [image_key(r) for r in b]


def compare(earlier: Sequence[Mapping], later: Sequence[Mapping]) -> dict[str, Any]:
    """later − earlier on the same images; ValueError when the passes asked different images."""
    if not same_images(earlier, later):
        raise ValueError("the two probe passes asked different images; nothing to pair")
    scores = lambda records: per_image([record_scores(r) for r in records])  # noqa: E731
    return paired_difference(scores(earlier), scores(later))


def pass_reading(probe_pass: Mapping[str, Any]) -> dict[str, Any]:
    """One pass's headline readings and its count readings per requested count."""
    records = probe_pass["records"]
    rows = [record_scores(r) for r in records]
    return {
        "step": probe_pass["step"],
        "n_images": len(records),
        "readings": headline_readings(records),
        "count_exact_by_asked": exact_by_count(rows),
        "mean_detected_by_asked": detected_by_count(rows),
    }


def run_overrides(run_dir: Path) -> list[str]:
    """The training run's Hydra overrides (what made it), [] when Hydra left none."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def training_commit(run_dir: Path) -> str | None:
    """The git commit the run recorded in git.json (None when it has none)."""
    path = run_dir / "git.json"
    return json.loads(path.read_text()).get("commit") if path.is_file() else None


def passes_by_step(run_dirs: Sequence[Path]) -> dict[int, list]:
    """step -> a pass's records over the folders (the first folder wins a step two hold)."""
    found: dict[int, list] = {}
    for run_dir in run_dirs:
        for probe_pass in read_passes(run_dir):
            found.setdefault(probe_pass["step"], probe_pass["records"])
    return found


def against_run(passes: Sequence[Mapping], other_dirs: Sequence[Path]) -> dict[str, Any]:
    """Each pass minus the other run's pass at the same step, where both asked the same images."""
    other = passes_by_step(other_dirs)
    return {
        str(p["step"]): compare(other[p["step"]], p["records"])
        for p in passes
        if p["step"] in other and same_images(other[p["step"]], p["records"])
    }


def learning_curve(run_dir: Path, against: Sequence[Path] = ()) -> dict[str, Any]:
    """Every pass's readings and the last pass against each earlier one asking the same images
    (a pass of another probe preset is read but not paired); with `against` (the folders of one
    other run's passes), each pass minus that run's pass at the same step."""
    passes = read_passes(run_dir)
    last = passes[-1]["records"]
    paired = {}
    if against:
        paired = {
            "against": ", ".join(other.name for other in against),
            "minus_against": against_run(passes, against),
        }
    return {
        "run": run_dir.name,
        "training_overrides": run_overrides(run_dir),
        "training_commit": training_commit(run_dir),
        "steps": [p["step"] for p in passes],
        "passes": [pass_reading(p) for p in passes],
        "last_minus_earlier": {
            str(p["step"]): compare(p["records"], last)
            for p in passes[:-1]
            if same_images(p["records"], last)
        },
        **paired,
    }


def plot(curve: Mapping[str, Any], path: Path) -> None:
    """One panel per headline reading: value and 95 % interval against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curve["passes"][0]["readings"])
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * len(names) + 4, 3.2), sharex=True)
    steps = curve["steps"]
    for axis, name in zip(axes[:-1], names, strict=True):
        values = [p["readings"][name]["value"] for p in curve["passes"]]
        lows = [
            v - p["readings"][name]["ci95"][0] for v, p in zip(values, curve["passes"], strict=True)
        ]
        highs = [
            p["readings"][name]["ci95"][1] - v for v, p in zip(values, curve["passes"], strict=True)
        ]
        axis.errorbar(steps, values, yerr=[lows, highs], marker="o", capsize=3)
        n = curve["passes"][-1]["readings"][name]["n"]
        axis.set_title(f"{name}\n(n = {n} at the last step)", fontsize=9)
        axis.set_ylim(0, 1)
        axis.set_xlabel("fine-tune step")
        axis.grid(alpha=0.3)
    plot_detected(axes[-1], curve)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_detected(axis, curve: Mapping[str, Any]) -> None:
    """Mean detected faces per requested count against the step (the diagonal: right)."""
    asked = list(curve["passes"][-1]["mean_detected_by_asked"])
    for k in asked:
        values = [p["mean_detected_by_asked"].get(k) for p in curve["passes"]]
        axis.plot(curve["steps"], values, marker="o", label=f"{k} asked")
        axis.axhline(float(k), color=axis.lines[-1].get_color(), lw=0.6, ls=":")
    axis.set_title("mean detected faces\n(dotted: the count asked)", fontsize=9)
    axis.set_xlabel("fine-tune step")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)


def summary_lines(curve: Mapping[str, Any]) -> list[str]:
    lines = []
    for p in curve["passes"]:
        cells = "; ".join(f"{k}: {format_reading(v)}" for k, v in p["readings"].items())
        lines.append(f"step {p['step']}: {cells}")
    for step, diff in curve["last_minus_earlier"].items():
        lead = diff[PAIRED_READINGS[0]]
        lines.append(
            f"last − step {step}, lead: {lead['difference']:+.3f} "
            f"[{lead['ci95'][0]:+.3f}, {lead['ci95'][1]:+.3f}], p = {lead['p_permutation']:.4f}"
        )
    for step, diff in curve.get("minus_against", {}).items():
        lead = diff[PAIRED_READINGS[0]]
        lines.append(
            f"step {step} − {curve['against']}, lead: {lead['difference']:+.3f} "
            f"[{lead['ci95'][0]:+.3f}, {lead['ci95'][1]:+.3f}], p = {lead['p_permutation']:.4f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("experiments/toy_finetune"))
    parser.add_argument(
        "--against",
        type=Path,
        nargs="+",
        help="a run to pair each pass with, step by step (more folders: more of its passes)",
    )
    args = parser.parse_args(argv)
    curve = learning_curve(args.run_dir, args.against or ())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    plot(curve, args.out / "curve.png")
    print("\n".join(summary_lines(curve)))
    print(f"wrote {args.out / 'curve.json'} and {args.out / 'curve.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
