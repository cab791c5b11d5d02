"""FINDINGS.md is assembled from each study's results.json: a difference is called established
only with p < 0.05 and a CI that excludes 0, and a study without results says it was not run."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.study.findings import render, run_size, verdict


def _results(diff: dict) -> dict:
    def arm(pooled: float, vs: dict | None = None) -> dict:
        row = {"over_seeds": {"mean": pooled, "ci95": None}, "pooled": pooled}
        if vs is not None:
            row["vs_baseline"] = vs
        metrics = {m: row for m in ("count/exact", "identity/lead@1", "count/abs_err")}
        return {"seeds": [1], "images": 640, "images_per_count": {"1": 128}, "metrics": metrics}

    return {
        "study": "count", "steps": 600, "baseline": "first",
        "metrics": ["count/exact", "identity/lead@1", "count/abs_err"],
        "arms": {"first": arm(0.20), "last": arm(0.26, diff)},
        "command": "python -m experiments.study count --seeds 1",
    }  # fmt: skip


def test_verdict_needs_both_the_p_value_and_the_interval() -> None:
    assert verdict({"diff": 0.06, "ci95": [0.02, 0.10], "p": 0.001}) == "established"
    assert verdict({"diff": 0.06, "ci95": [-0.01, 0.10], "p": 0.04}) == "not established"
    assert verdict({"diff": 0.06, "ci95": [0.01, 0.10], "p": 0.20}) == "not established"
    assert verdict({"diff": None, "ci95": None, "p": None}) == "no difference computed"
    one_run = verdict({"diff": 0.06, "ci95": [0.02, 0.10], "p": 0.001}, seeds=1)
    assert one_run.startswith("established") and "seed spread unknown" in one_run


def test_verdict_refuses_a_difference_the_training_seeds_disagree_on() -> None:
    pooled = {"diff": -0.06, "ci95": [-0.09, -0.03], "p": 0.0005}
    agree = verdict({**pooled, "per_seed": {"1": -0.10, "2": -0.02}}, seeds=2)
    disagree = verdict({**pooled, "per_seed": {"1": -0.13, "2": +0.01}}, seeds=2)
    assert agree == "established"
    assert disagree.startswith("not established") and "disagree" in disagree


def test_a_significant_but_tiny_difference_is_called_negligible_and_printed_with_its_size() -> None:
    from experiments.study.report import diff_cell

    tiny = {"diff": 4.2e-6, "ci95": [3.1e-6, 5.0e-6], "p": 0.0005}
    assert "negligible" in verdict(tiny)
    assert diff_cell(tiny) == "+4.2e-06 [+3.1e-06, +5.0e-06], p = 0.0005"


def test_render_reports_run_and_unrun_studies(tmp_path: Path) -> None:
    diff = {"diff": 0.06, "ci95": [0.02, 0.10], "p": 0.002, "n_images": 640}
    (tmp_path / "count").mkdir()
    (tmp_path / "count" / "results.json").write_text(json.dumps(_results(diff)))
    text = render(studies_dir=tmp_path, world=tmp_path / "missing.json")
    count = text.split("## count")[1].split("\n## ")[0]
    one_seed = "+0.060 [+0.020, +0.100], p = 0.002 | established within one run"
    assert one_seed in count  # both arms have one training seed
    assert "| mean \\|detected − asked\\| |" in count  # the label's bars do not split cells
    assert "`python -m experiments.study count --seeds 1`" in count
    assert "1 × 640" in count and "| `last` | 1 × 128 |" in count  # lead@1 reads 1-person images
    two_seeds = {"seeds": [1, 2], "images": 1280, "images_per_count": {"1": 256}}
    assert run_size("count/exact", two_seeds) == "2 × 640"  # images are pooled over seeds
    assert run_size("identity/lead@1", two_seeds) == "2 × 128"
    assert "**Reading**" not in count  # none written for it
    (tmp_path / "count" / "READING.md").write_text("The count token was not learned.\n")
    with_reading = render(studies_dir=tmp_path, world=tmp_path / "missing.json")
    assert "The count token was not learned." in with_reading.split("## count")[1]
    face_grid = text.split("## face_grid")[1].split("\n## ")[0]
    assert "**Not run yet.**" in face_grid
    assert "not measured" in text  # the base's limits, when embedded_world.json is absent


def test_a_difference_over_several_seeds_lists_each_seeds_own() -> None:
    from experiments.study.report import diff_cell

    two = {"diff": -0.06, "ci95": [-0.09, -0.03], "p": 0.0005, "per_seed": {"1": -0.13, "2": 0.01}}
    assert diff_cell(two).endswith("p = 0.0005; seeds -0.130 / +0.010")
    one = {**two, "per_seed": {"1": -0.06}}
    assert diff_cell(one).endswith("p = 0.0005")
