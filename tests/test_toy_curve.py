"""The toy fine-tune's learning curve: readings per probe pass, the last pass paired with each
earlier one on the same images."""

from __future__ import annotations

import json

import pytest

from experiments.toy_finetune.curve import compare, learning_curve, main


def record(seed: int, lead_drawn: bool, count: int = 1) -> dict:
    names = ["SaitoMio", "KonoRina", "OnoHaru"][:count]
    boxes = [[c / 5 + 0.05, 0.45, c / 5 + 0.15, 0.55] for c in range(count)]
    return {
        "prompt": f"{count}person, " + ", ".join(names),
        "layout": "row",
        "seed": seed,
        "count": count,
        "cells": [[c, 2] for c in range(count)],
        "characters": names,
        "detected_boxes": boxes,
        "detected_count": count,
        "identities": [names[0] if lead_drawn else "TeraNao", *names[1:]],
    }


def write_pass(run_dir, step: int, records: list[dict]) -> None:
    probes = run_dir / "probes"
    probes.mkdir(parents=True, exist_ok=True)
    (probes / f"step_{step:06d}.json").write_text(json.dumps({"step": step, "records": records}))


def test_the_curve_reads_each_pass_and_pairs_the_last_with_the_earlier(tmp_path):
    n = 40
    write_pass(tmp_path, 300, [record(s, lead_drawn=s < 8) for s in range(n)])
    write_pass(tmp_path, 600, [record(s, lead_drawn=s < 32) for s in range(n)])
    curve = learning_curve(tmp_path)
    assert curve["steps"] == [300, 600]
    leads = [p["readings"]["lead drawn (1person, <name>)"] for p in curve["passes"]]
    assert [(r["k"], r["n"]) for r in leads] == [(8, n), (32, n)]
    assert curve["passes"][1]["count_exact_by_asked"]["1"]["k"] == n
    assert curve["passes"][1]["mean_detected_by_asked"] == {"1": 1.0}
    paired = curve["last_minus_earlier"]["300"]["lead drawn (1person, <name>)"]
    assert paired["difference"] == pytest.approx(24 / n)
    assert paired["ci95"][0] > 0 and paired["p_permutation"] < 0.01
    assert paired["n_images"] == n


def test_passes_of_other_images_are_read_but_not_paired(tmp_path):
    write_pass(tmp_path, 0, [record(s, lead_drawn=False) for s in range(4)])
    write_pass(tmp_path, 300, [record(s, lead_drawn=True) for s in range(8)])
    curve = learning_curve(tmp_path)
    assert curve["steps"] == [0, 300] and curve["last_minus_earlier"] == {}
    with pytest.raises(ValueError, match="different images"):
        compare([record(0, True)], [record(1, True)])


def test_a_run_without_probes_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="probes"):
        learning_curve(tmp_path)


def test_the_command_writes_the_json_and_the_picture(tmp_path, capsys):
    run = tmp_path / "run"
    write_pass(run, 300, [record(s, lead_drawn=s % 2 == 0, count=1 + s % 3) for s in range(12)])
    write_pass(run, 600, [record(s, lead_drawn=True, count=1 + s % 3) for s in range(12)])
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "curve.json").read_text())
    assert written["steps"] == [300, 600]
    assert (tmp_path / "out" / "curve.png").stat().st_size > 1000
    assert "last − step 300, lead: +0.500" in capsys.readouterr().out


def test_each_pass_is_paired_with_the_other_run_at_the_same_step(tmp_path):
    """EMA against raw weights of one trajectory: step by step, only where the images match."""
    ema, raw = tmp_path / "ema", tmp_path / "raw"
    n = 40
    write_pass(ema, 300, [record(s, lead_drawn=s < 30) for s in range(n)])
    write_pass(raw, 300, [record(s, lead_drawn=s < 10) for s in range(n)])
    write_pass(ema, 600, [record(s, lead_drawn=True) for s in range(n)])
    write_pass(raw, 600, [record(s, lead_drawn=True) for s in range(n + 1)])  # other images
    curve = learning_curve(ema, against=[raw])
    assert curve["against"] == "raw" and set(curve["minus_against"]) == {"300"}
    lead = curve["minus_against"]["300"]["lead drawn (1person, <name>)"]
    assert lead["difference"] == pytest.approx(20 / n) and lead["p_permutation"] < 0.01
    assert "minus_against" not in learning_curve(ema)

    # the other run's passes may lie in several folders; the first folder wins a shared step
    later = tmp_path / "raw_later"
    write_pass(later, 300, [record(s, lead_drawn=True) for s in range(n)])
    write_pass(later, 900, [record(s, lead_drawn=s < 20) for s in range(n)])
    write_pass(ema, 900, [record(s, lead_drawn=True) for s in range(n)])
    merged = learning_curve(ema, against=[raw, later])
    assert merged["against"] == "raw, raw_later" and set(merged["minus_against"]) == {"300", "900"}
    assert merged["minus_against"]["300"]["lead drawn (1person, <name>)"] == lead
    late_lead = merged["minus_against"]["900"]["lead drawn (1person, <name>)"]
    assert late_lead["difference"] == pytest.approx(20 / n)


def test_the_arms_table_has_a_row_per_arm_and_a_column_per_step(tmp_path):
    from experiments.toy_finetune.arms import main as arms_main

    dirs = []
    for name, drawn, overrides in (("a", 10, ["seed=1"]), ("b", 30, ["seed=2", "probes.ema=true"])):
        run = tmp_path / name
        write_pass(run, 300, [record(s, lead_drawn=s < drawn) for s in range(40)])
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {o}\n" for o in ["experiment=toy_phase1", *overrides])
        )
        (run / "curve.json").write_text(json.dumps(learning_curve(run)))
        dirs.append(str(run))
    out = tmp_path / "arms.md"
    assert arms_main([*dirs, "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| seed")]
    assert rows == [
        "| seed=1 | 0.25 [0.14, 0.40] (10/40) |",
        "| seed=2, probes.ema=true | 0.75 [0.60, 0.86] (30/40) |",
    ]


def test_an_arm_is_named_by_its_schedule_and_clipping_in_short():
    from experiments.toy_finetune.arms import arm_name

    warmup = "model.lr_scheduler={_target_:torch.optim.lr_scheduler.LinearLR,_partial_:true}"
    curve = {
        "run": "r",
        "training_overrides": [
            "probes=study",
            "seed=3",
            "model.optimizer.lr=1e-3",
            warmup,
            "trainer.gradient_clip_val=1.0",
            "caption.drop_hair_tags=true",
        ],
    }
    assert arm_name(curve) == (
        "seed=3, model.optimizer.lr=1e-3, lr warmup, trainer.gradient_clip_val=1.0, "
        "caption.drop_hair_tags=true"
    )
    assert arm_name({"run": "plain", "training_overrides": ["probes=study"]}) == "plain"
    named = ["experiment=toy_phase1_droplook", "probes=study", "seed=4"]
    assert arm_name({"run": "r", "training_overrides": named}) == (
        "experiment=toy_phase1_droplook, seed=4"
    )
    toy = ["experiment=toy_phase1", "seed=4", "trainer.max_steps=2700"]
    assert arm_name({"run": "r", "training_overrides": toy}) == "seed=4, trainer.max_steps=2700"
