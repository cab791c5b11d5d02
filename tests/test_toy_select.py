"""experiments.toy_finetune.select: choose the end point on validation seeds, report on others."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from experiments.toy_finetune.select import (
    check_same_training,
    chosen_step,
    main,
    select,
)
from tests.conftest import run_training
from ymn.model.components import load_components
from ymn.model.export import LIGHTNING_PREFIXES


def reading(value: float) -> dict:
    return {"value": value, "k": int(value * 10), "n": 10}


def test_the_highest_validation_reading_is_chosen_and_the_earliest_of_ties():
    assert chosen_step({300: reading(0.5), 600: reading(0.9), 900: reading(0.7)}) == 600
    assert chosen_step({900: reading(0.8), 300: reading(0.8), 600: reading(0.2)}) == 300


def write_losses(run_dir: Path, losses: dict[int, str]) -> None:
    (run_dir / "csv").mkdir(parents=True)
    rows = ["step,train/loss,val/loss"] + [f"{s},{v}," for s, v in losses.items()]
    rows.append("300,,0.5")  # a validation row has no train/loss
    (run_dir / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_folders_of_different_trainings_are_refused(tmp_path):
    first, same, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_losses(first, {9: "0.31", 19: "0.42"})
    write_losses(same, {9: "0.31", 19: "0.42", 29: "0.40"})
    write_losses(other, {9: "0.31", 19: "0.43"})
    assert check_same_training([first, same]) == 2
    with pytest.raises(ValueError, match="train/loss at step 19 is 0.43 against 0.42"):
        check_same_training([first, other])


@pytest.fixture(scope="module")
def tiny_select_config(tmp_path_factory) -> dict:
    """toy_phase1_select resolved, its probe pass cut to 2 seeds, one layout, 2 DDIM steps."""
    out = run_training(
        [
            sys.executable,
            "-m",
            "ymn.train",
            "experiment=toy_phase1_select",
            "probes.seeds=[64,65]",
            "probes.layouts=[row]",
            "probes.steps=2",
            "probes.batch_size=2",
            "probes.attention_on_samples=false",
            "--cfg",
            "job",
            "--resolve",
        ]  # fmt: skip
    )
    return yaml.safe_load(out.stdout)


def write_run(run_dir: Path, cfg: dict, steps: list[int], losses: dict[int, str]) -> None:
    """A run folder: resolved config, CSV losses, and the embedded base saved as step
    checkpoints in the Lightning layout (state_dict keys `unet.*`, `text_encoder.*`, `vae.*`)."""
    components = load_components()
    state = {
        f"{name}.{key}": value
        for name in LIGHTNING_PREFIXES
        for key, value in getattr(components, name).state_dict().items()
    }
    (run_dir / "checkpoints").mkdir(parents=True)
    for step in steps:
        torch.save({"state_dict": state}, run_dir / "checkpoints" / f"step{step:07d}.ckpt")
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    write_losses(run_dir, losses)


def test_a_run_and_its_later_checkpoints_are_chosen_on_validation_and_read_on_test(
    tmp_path, tiny_select_config, capsys
):
    early, late = tmp_path / "early", tmp_path / "late"
    write_run(early, tiny_select_config, [300], {9: "0.3"})
    write_run(late, tiny_select_config, [600], {9: "0.3", 309: "0.2"})
    assert main([str(early), "--also", str(late), "--test-seeds", "3"]) == 0
    result = json.loads((early / "select" / "selected.json").read_text())
    assert result["train_loss_steps_compared"] == 1
    assert sorted(result["validation"]) == ["300", "600"]
    assert all(r["n"] == 2 for r in result["validation"].values())  # seeds 64, 65
    # the same weights read the same on the same seeds: the earliest of the tie is chosen
    assert result["validation"]["300"] == result["validation"]["600"]
    assert result["chosen_step"] == 300
    assert result["chosen_checkpoint"] == "early/checkpoints/step0000300.ckpt"
    assert result["test"]["n"] == 3 and result["test_seeds"] == [0, 2]
    test_pass = json.loads((early / "select" / "test" / "probes" / "step_000300.json").read_text())
    assert [r["seed"] for r in test_pass["records"]] == [0, 1, 2]
    assert "chosen step 300" in capsys.readouterr().out
    # no folder read the last step on the test seeds: it is sampled, and paired with the chosen
    sampled_last = early / "select" / "test" / "probes" / "step_000600.json"
    assert sampled_last.is_file()
    assert result["last_step"] == 600
    assert result["test_at_last_step"] == result["test"]  # the same weights, the same images
    assert result["chosen_minus_last"]["difference"] == 0.0
    assert result["chosen_minus_last"]["n_images"] == 3

    # a folder's own last-step pass on the test seeds is read instead of sampling one
    sampled_last.unlink()
    (late / "probes").mkdir()
    (late / "probes" / "step_000600.json").write_text(
        json.dumps(test_pass | {"step": 600}), encoding="utf-8"
    )
    assert main([str(early), "--also", str(late), "--test-seeds", "3"]) == 0
    result = json.loads((early / "select" / "selected.json").read_text())
    assert not sampled_last.exists()
    assert result["chosen_minus_last"]["n_images"] == 3


def test_validation_seeds_that_overlap_the_test_seeds_are_refused(tmp_path, tiny_select_config):
    cfg = tiny_select_config | {"probes": tiny_select_config["probes"] | {"seeds": [0, 1]}}
    write_run(tmp_path / "run", cfg, [300], {9: "0.3"})
    with pytest.raises(ValueError, match="overlap the test seeds"):
        select([tmp_path / "run"], list(range(64)), tmp_path / "out")


def test_the_table_has_a_row_per_training_seed_and_a_column_per_step(tmp_path, capsys):
    from experiments.toy_finetune.selected_table import main as table_main

    def selection(run: str, values: dict[int, float], chosen: int, last: bool) -> dict:
        found = {
            "runs": [run, "droplook"],
            "validation_seeds": [64, 127],
            "test_seeds": [0, 63],
            "validation": {str(s): reading(v) for s, v in values.items()},
            "chosen_step": chosen,
            "test": {"value": 0.8, "k": 8, "n": 10, "ci95": [0.49, 0.94]},
        }
        if last:
            found |= {
                "test_at_last_step": {"value": 0.2, "k": 2, "n": 10, "ci95": [0.06, 0.51]},
                "chosen_minus_last": {"difference": 0.6, "ci95": [0.3, 0.9], "p_permutation": 0.01},
            }
        return found

    paths = []
    for name, sel in {
        "a.json": selection("select_s2", {300: 0.1, 600: 0.9}, 600, last=False),
        "b.json": selection("select_s3", {300: 0.7, 900: 0.2}, 300, last=True),
    }.items():
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(sel))
    assert table_main([*map(str, paths), "--out", str(tmp_path / "t.md")]) == 0
    rows = (tmp_path / "t.md").read_text().splitlines()
    assert rows[0].startswith("| training seed | 300 | 600 | 900 | chosen |")
    assert rows[2].startswith(
        "| 2 | 0.10 | 0.90 | – | 600 | **0.80 [0.49, 0.94] (8/10)** | – | – |"
    )
    assert "| 3 | 0.70 | – | 0.20 | 300 |" in rows[3]
    assert rows[3].endswith("| 0.20 [0.06, 0.51] (2/10) | +0.60 [+0.30, +0.90], p = 0.0100 |")
    assert "seeds 64–127" in capsys.readouterr().out
