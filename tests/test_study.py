"""The study runner (experiments/study): shipped studies compose, runs are reused or resumed,
statistics behave, and the report is written."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments.study.readings import METRICS, RunReading, columns, read_run, record_terms
from experiments.study.report import cell_accuracy, write_results
from experiments.study.runner import StaleRunError, command, plan, run_jobs
from experiments.study.spec import (
    StudySpec,
    StudySpecError,
    available_studies,
    load_study,
    only_arms,
)
from experiments.study.stats import paired_difference, t_interval


def spec(**changes) -> StudySpec:
    base = dict(
        name="t", question="q", arms={"a": ["caption=asp"], "b": ["caption=count_last"]},
        baseline="a", seeds=[1, 2], steps=3, common=["experiment=smoke"],
        metrics=["count/exact", "grid/cell_acc", "identity/char_acc"],
    )  # fmt: skip
    return StudySpec(**(base | changes))


def record(asked: int, detected: int, cell=(2, 2), found_cell=(2, 2)) -> dict:
    """A probe record with `detected` faces, the first in found_cell."""

    def box(c):
        return [c[0] / 5 + 0.05, c[1] / 5 + 0.05, c[0] / 5 + 0.15, c[1] / 5 + 0.15]

    boxes = [box(found_cell)] + [box((0, 0))] * (detected - 1) if detected else []
    return {"count": asked, "detected_count": detected, "cells": [list(cell)],
            "detected_boxes": boxes, "characters": ["SaitoMio"],
            "identities": ["SaitoMio"] + [None] * (detected - 1) if detected else []}  # fmt: skip


def test_every_shipped_study_loads_and_its_arms_compose():
    names = available_studies()
    assert {"count", "face_grid", "characters", "hands", "phase2", "timestep_bias"} <= set(names)
    for name in names:
        study = load_study(name)
        assert study.baseline in study.arms and study.full_command.startswith("ymn-train")
        jobs = plan(study, Path("/nonexistent"))  # composes every arm's overrides
        assert len(jobs) == len(study.arms) * len(study.seeds)
        assert all(j.data_marker is not None for j in jobs)


def test_bad_study_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\narms: {a: []}\nbaseline: z\nseeds: [1]\nsteps: 2\n")
    with pytest.raises(StudySpecError, match="baseline 'z'"):
        load_study(str(bad))
    bad.write_text("name: x\narms: {a: []}\nbaseline: a\nseeds: [1]\nsteps: 2\nmetrics: [nope]\n")
    with pytest.raises(StudySpecError, match="unknown metric"):
        load_study(str(bad))
    bad.write_text("name: x\narms: {a: [], b: {after: c}}\nbaseline: a\nseeds: [1]\nsteps: 2\n")
    with pytest.raises(StudySpecError, match="runs after 'c'"):
        load_study(str(bad))
    with pytest.raises(StudySpecError, match="known studies"):
        load_study("no_such_study")


def test_a_study_runs_in_parts_keeping_its_phase_chains(tmp_path):
    study = tmp_path / "parts.yaml"
    study.write_text(
        "name: parts\nbaseline: a\nseeds: [1]\nsteps: 2\n"
        "arms: {a: [], b: [x=1], c: {after: b, steps: 3}, d: [y=2]}\n"
    )
    full = load_study(str(study))
    part = only_arms(full, ["d", "a"])
    assert list(part.arms) == ["a", "d"] and part.jobs() == [("a", 1), ("d", 1)]
    assert list(only_arms(full, ["d"]).arms) == ["d"]  # the baseline may run in another part
    chain = only_arms(full, ["a", "b", "c"])
    assert chain.arm_after == {"c": "b"} and chain.steps_of("c") == 3
    with pytest.raises(StudySpecError, match=r"keep \['b'\]"):
        only_arms(full, ["a", "c"])
    with pytest.raises(StudySpecError, match="no arm"):
        only_arms(full, ["a", "zz"])


def test_an_arm_with_an_unknown_key_fails_before_anything_runs(tmp_path):
    from ymn.reliability.config_schema import ConfigError

    with pytest.raises(ConfigError, match="bogus"):
        plan(spec(arms={"a": ["+model.bogus=1"]}, baseline="a"), tmp_path)


def test_record_terms_score_count_cell_and_identity():
    hit = record_terms(record(1, 1))
    assert (hit["exact"], hit["cell_hits"], hit["cell_targets"], hit["id_correct"]) == (1, 1, 1, 1)
    miss = record_terms(record(1, 3, found_cell=(4, 4)))
    assert miss["exact"] == 0 and miss["cell_hits"] == 0 and miss["detected"] == 3
    cols = columns([hit, miss])
    assert METRICS["count/exact"][1](cols) == 0.5
    assert METRICS["count/bias"][1](cols) == 1.0
    assert METRICS["count/detected@1"][1](cols) == 2.0


def test_cell_gain_is_zero_when_faces_ignore_the_asked_cell_and_positive_when_they_follow_it():
    from experiments.study.readings import pass_terms

    cells = [(0, 0), (4, 0), (0, 4), (4, 4)]
    follows = [record(1, 1, cell=c, found_cell=c) for c in cells]
    ignores = [record(1, 1, cell=c, found_cell=(0, 0)) for c in cells]  # always top-left
    gain = METRICS["grid/cell_gain"][1]
    assert gain(columns(pass_terms(follows))) == 1.0
    assert METRICS["grid/cell_acc"][1](columns(pass_terms(ignores))) == 0.25
    assert gain(columns(pass_terms(ignores))) == 0.0
    mixed = pass_terms([*follows, record(2, 2, cell=(2, 2), found_cell=(2, 2))])
    assert mixed[-1]["cell_hits_shuffled"] == 1  # the only 2-person image is its own partner


def test_lead_drawn_reads_one_person_prompts_only():
    wrong = record(1, 1) | {"identities": ["KonoRina"]}
    rows = [record_terms(r) for r in (record(1, 1), wrong, record(2, 2))]
    assert METRICS["identity/lead@1"][1](columns(rows)) == 0.5


def test_slope_of_detected_on_asked():
    rows = [record_terms(record(k, 2 * k)) for k in (1, 2, 3)]
    assert METRICS["count/slope"][1](columns(rows)) == pytest.approx(2.0)


def reading(arm: str, seed: int, outcomes: list[bool]) -> RunReading:
    records = [record(1, 1 if ok else 2) for ok in outcomes]
    return RunReading(arm, seed, 10, columns([record_terms(r) for r in records]), records)


def test_paired_difference_is_zero_for_identical_arms_and_significant_for_a_clear_gain():
    same = paired_difference("count/exact", [reading("b", 1, [True, False] * 20)],
                             [reading("a", 1, [True, False] * 20)])  # fmt: skip
    assert same["diff"] == 0 and same["p"] == 1.0
    better = paired_difference("count/exact", [reading("b", 1, [True] * 60)],
                               [reading("a", 1, [False] * 60)])  # fmt: skip
    assert better["diff"] == 1.0 and better["p"] < 0.01 and better["ci95"][0] > 0.5
    mixed = paired_difference("count/exact", [reading("b", 1, [True] * 6 + [False] * 4)],
                              [reading("a", 1, [True] * 5 + [False] * 5)])  # fmt: skip
    assert mixed["ci95"][0] <= mixed["diff"] <= mixed["ci95"][1] and mixed["p"] > 0.3


def test_paired_difference_keeps_each_training_seeds_own_difference():
    arm = [reading("b", 1, [True] * 8 + [False] * 2), reading("b", 2, [True] * 3 + [False] * 7)]
    base = [reading("a", 1, [True] * 4 + [False] * 6), reading("a", 2, [True] * 5 + [False] * 5)]
    diff = paired_difference("count/exact", arm, base)
    assert diff["per_seed"] == pytest.approx({"1": 0.4, "2": -0.2})
    assert diff["diff"] == pytest.approx(0.1)


def test_unpaired_probe_passes_are_refused():
    other = RunReading("b", 1, 10, columns([record_terms(record(3, 3))]), [record(3, 3)])
    with pytest.raises(ValueError, match="different probe passes"):
        paired_difference("count/exact", [other], [reading("a", 1, [True])])


def test_pooled_interval_brackets_the_pooled_value():
    from experiments.study.stats import pooled_interval

    rows = [record_terms(record(1, 1 if i % 2 else 2)) for i in range(64)]
    run = RunReading("a", 1, 600, columns(rows), [])
    low, high = pooled_interval("count/exact", [run])
    assert low < 0.5 < high and high - low < 0.4
    assert pooled_interval("count/exact", []) is None


def test_t_interval():
    stat = t_interval([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0 and stat["ci95"] == pytest.approx(2.4841, abs=1e-3)
    assert t_interval([1.0])["ci95"] is None


class FakeProcess:
    def __init__(self, code: int):
        self.code = code

    def poll(self) -> int:
        return self.code

    def terminate(self) -> None:
        pass


def fake_launcher(calls: list, fail: set = frozenset()):
    """Writes a finished-looking run (probe passes at step 0 and at max_steps) instead of
    training."""

    def launch(cmd: list[str], log: Path, env: dict) -> FakeProcess:
        calls.append(cmd)
        run_dir = log.parent
        (run_dir / "probes").mkdir(parents=True, exist_ok=True)
        good = "caption=count_last" in cmd
        if "export=true" in cmd:
            (run_dir / "export" / "diffusers").mkdir(parents=True, exist_ok=True)
            (run_dir / "export" / "diffusers" / "model_index.json").write_text("{}")
        end = int(
            next(c for c in reversed(cmd) if c.startswith("trainer.max_steps=")).split("=")[1]
        )
        for step, ok in ((0, False), (end, good)):
            payload = {"step": step, "records": [record(1, 1 if ok else 2) for _ in range(8)]}
            (run_dir / "probes" / f"step_{step:06d}.json").write_text(json.dumps(payload))
        return FakeProcess(1 if run_dir.name in fail else 0)

    return launch


def test_finished_runs_are_reused_and_unfinished_ones_resume(tmp_path):
    study = spec()
    jobs = plan(study, tmp_path)
    calls: list = []
    failed = run_jobs(jobs, 2, lambda job: None, fake_launcher(calls, fail={"seed2"}), poll_s=0)
    assert len(calls) == 4 and {(j.arm, j.seed) for j in failed} == {("a", 2), ("b", 2)}
    assert all("ckpt_path=last" in c for c in calls)  # a half-done run continues from its ckpt
    calls.clear()
    assert run_jobs(plan(study, tmp_path), 2, lambda job: None, fake_launcher(calls), 0) == []
    assert sorted(c[-2] for c in calls) == sorted(f"hydra.run.dir={j.run_dir}" for j in jobs
                                                  if j.seed == 2)  # fmt: skip
    calls.clear()
    run_jobs(plan(study, tmp_path), 2, lambda job: None, fake_launcher(calls), 0)
    assert calls == []  # everything finished: nothing runs again


def test_a_run_that_exits_0_without_its_final_probe_pass_fails_and_reruns(tmp_path, capsys):
    """A run killed during its end pass resumes at max_steps; if that resume wrote no pass at
    the final step, it is reported as failed, not marked finished with nothing to read."""

    def without_end_pass(cmd: list[str], log: Path, env: dict) -> FakeProcess:
        process = fake_launcher([])(cmd, log, env)
        (log.parent / "probes" / "step_000003.json").unlink()
        return process

    study = spec(seeds=[1])
    failed = run_jobs(plan(study, tmp_path), 2, lambda job: None, without_end_pass, poll_s=0)
    assert {(j.arm, j.seed) for j in failed} == {("a", 1), ("b", 1)}
    assert "no probe pass at step 3" in capsys.readouterr().out
    assert not any(job.finished_here() for job in plan(study, tmp_path))
    assert run_jobs(plan(study, tmp_path), 2, lambda job: None, fake_launcher([]), 0) == []
    assert all(job.is_done() for job in plan(study, tmp_path))


def test_a_resumed_run_is_marked_and_left_out_of_the_measured_cost(tmp_path):
    """A launch that continues a killed run's checkpoint timed only its own part: the marker
    says so and the cost per run averages the runs that ran in one launch."""
    from experiments.study.__main__ import finished_readings

    study = spec()
    jobs = plan(study, tmp_path)
    killed = next(j for j in jobs if (j.arm, j.seed) == ("a", 2))
    (killed.run_dir / "checkpoints").mkdir(parents=True)
    (killed.run_dir / "checkpoints" / "step0000002.ckpt").write_bytes(b"")
    assert run_jobs(jobs, 2, lambda job: None, fake_launcher([]), poll_s=0) == []
    assert {(j.arm, j.seed): j.marker()["resumed"] for j in jobs} == {
        ("a", 1): False, ("a", 2): True, ("b", 1): False, ("b", 2): False}  # fmt: skip
    _, walls = finished_readings(study, plan(study, tmp_path))
    assert len(walls["a"]) == 1 and len(walls["b"]) == 2


def test_an_arm_after_another_starts_from_its_finished_run_or_is_skipped(tmp_path):
    chained = spec(
        arms={"a": ["caption=asp"], "first": ["caption=asp"], "second": ["caption=count_last"]},
        arm_steps={"first": 1, "second": 2},
        arm_after={"second": "first"},
        seeds=[1, 2],
    )
    jobs = plan(chained, tmp_path)
    second = next(j for j in jobs if j.arm == "second" and j.seed == 1)
    assert f"init_from={tmp_path / 't' / 'first' / 'seed1'}" in second.overrides
    assert "trainer.max_steps=2" in second.overrides
    order: list[tuple[str, int]] = []
    failed = run_jobs(jobs, 3, lambda job: order.append((job.arm, job.seed)),
                      fake_launcher([], fail={"seed2"}), poll_s=0)  # fmt: skip
    assert order.index(("second", 1)) > order.index(("first", 1))
    assert {(j.arm, j.seed) for j in failed} == {("a", 2), ("first", 2), ("second", 2)}


def test_a_finished_run_with_other_settings_is_not_overwritten(tmp_path):
    run_jobs(plan(spec(), tmp_path), 1, lambda job: None, fake_launcher([]), poll_s=0)
    with pytest.raises(StaleRunError, match="delete it"):
        run_jobs(plan(spec(steps=5), tmp_path), 1, lambda job: None, fake_launcher([]), 0)


def test_a_finished_run_logged_differently_is_reused(tmp_path):
    run_jobs(plan(spec(), tmp_path), 1, lambda job: None, fake_launcher([]), poll_s=0)
    relogged = spec(common=["experiment=smoke", "logger=wandb"])
    calls: list = []
    run_jobs(plan(relogged, tmp_path), 1, lambda job: None, fake_launcher(calls), poll_s=0)
    assert calls == []  # only how it is logged changed: nothing reruns


def test_a_study_run_logs_to_the_study_group_tagged_with_its_arm(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ymn.paths import CONFIG_DIR

    job = next(j for j in plan(spec(common=["experiment=smoke", "logger=wandb"]), tmp_path)
               if j.arm == "b")  # fmt: skip
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=job.overrides)
    GlobalHydra.instance().clear()
    assert cfg.logger.wandb.group == "study_t" and list(cfg.logger.wandb.tags) == ["b"]
    assert cfg.logger.wandb.name == "study_t_b"


def test_runs_that_share_a_data_folder_wait_for_the_first_to_build_it(tmp_path):
    jobs = plan(spec(seeds=[1]), tmp_path)
    marker = tmp_path / "data" / "index.json"
    for job in jobs:
        job.data_marker = marker
    started: list[int] = []

    def launch(cmd, log, env):
        started.append(len(started))
        marker.parent.mkdir(exist_ok=True)
        return fake_launcher([])(cmd, log, env)

    class Slow(FakeProcess):
        polls = 0

        def poll(self):
            Slow.polls += 1
            return 0 if Slow.polls > 2 else None

    def slow_launch(cmd, log, env):
        launch(cmd, log, env)
        return Slow(0)

    order: list[str] = []
    run_jobs(jobs, 2, lambda job: order.append(job.arm), slow_launch, poll_s=0)
    assert order == ["a", "b"]  # b started only after a finished (no marker was ever written)


def test_the_report_has_tables_differences_and_pictures(tmp_path):
    study = spec()
    jobs = plan(study, tmp_path / "runs")
    run_jobs(jobs, 2, lambda job: None, fake_launcher([]), poll_s=0)
    readings = [read_run(j.run_dir, j.arm, j.seed, study.metrics) for j in jobs]
    assert readings[0].curve[0]["count/exact"] == 0.0
    md = write_results(study, readings, {"a": [60.0], "b": [60.0]}, tmp_path / "out", "cmd")
    text = md.read_text()
    assert "| b | 1.000 ± 0.000 | 1.000 [1.000, 1.000] | +1.000" in text
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["arms"]["b"]["metrics"]["count/exact"]["vs_baseline"]["p"] < 0.01
    assert result["arms"]["a"]["images_per_count"] == {"1": 16}
    for arm in ("a", "b"):  # each training seed's own value, beside the interval over them
        assert result["arms"][arm]["metrics"]["count/exact"]["per_seed"] == {
            str(r.seed): r.value("count/exact") for r in readings if r.arm == arm}  # fmt: skip
    for picture in ("learning_curves.png", "count.png", "cells.png"):
        assert (tmp_path / "out" / picture).stat().st_size > 1000
    assert str(tmp_path) not in (tmp_path / "out" / "results.json").read_text()


def test_cell_accuracy_map():
    hit = record(1, 1, cell=(1, 3), found_cell=(1, 3))
    grid = cell_accuracy([hit, record(1, 1, cell=(1, 3), found_cell=(0, 0))])
    assert grid[3, 1] == 0.5 and np.isnan(grid[0, 0])


def test_command_resumes_in_its_run_dir(tmp_path):
    job = plan(spec(seeds=[1]), tmp_path)[0]
    cmd = command(job)
    assert f"hydra.run.dir={job.run_dir}" in cmd and cmd[-1] == "ckpt_path=last"
    assert "seed=1" in cmd and "trainer.max_steps=3" in cmd


def test_collect_only_records_the_command_that_reproduces_the_table(tmp_path):
    from experiments.study.__main__ import main

    definition = tmp_path / "t.yaml"
    definition.write_text(
        "name: t\nquestion: q\narms: {a: [caption=asp], b: [caption=count_last]}\n"
        "baseline: a\nseeds: [1]\nsteps: 3\ncommon: [experiment=smoke]\nmetrics: [count/exact]\n"
    )
    runs, out = tmp_path / "runs", tmp_path / "out"
    run_jobs(plan(load_study(str(definition)), runs), 2, lambda job: None, fake_launcher([]), 0)
    args = [str(definition), "--collect-only", "--runs", str(runs), "--out", str(out)]
    assert main(args) == 0
    recorded = json.loads((out / "results.json").read_text())["command"]
    assert recorded == f"python -m experiments.study {definition} --runs {runs} --out {out}"


def test_kept_readings_count_as_finished_runs_when_the_runs_folder_is_gone(tmp_path):
    from experiments.study.__main__ import finished_readings

    study, kept = spec(), tmp_path / "kept"
    jobs = plan(study, tmp_path / "runs", kept_root=kept)
    run_jobs(jobs, 2, lambda job: None, fake_launcher([]), poll_s=0)
    before, _ = finished_readings(study, jobs)  # keeps each finished run's reading
    assert sorted(p.name for p in (kept / "b" / "seed1" / "probes").iterdir()) == [
        "step_000000.json", "step_000003.json"]  # fmt: skip
    shutil.rmtree(tmp_path / "runs")
    fresh = plan(study, tmp_path / "runs", kept_root=kept)
    calls: list = []
    assert run_jobs(fresh, 2, lambda job: None, fake_launcher(calls), poll_s=0) == []
    assert calls == []  # nothing reruns
    after, walls = finished_readings(study, fresh)
    assert [r.value("count/exact") for r in after] == [r.value("count/exact") for r in before]
    assert len(walls["a"]) == 2


def test_kept_readings_are_committed_not_ignored_as_scratch():
    """The runner's default runs folder is ignored; a study's kept readings beside its results
    are not (an ignore rule matching any `runs/` once dropped every kept reading from the
    commits)."""
    import subprocess

    from experiments.study.__main__ import REPO, default_out, parse_args

    def ignored(path: Path) -> bool:
        check = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(REPO))], cwd=REPO)
        assert check.returncode in (0, 1), "needs a git checkout of ymn"
        return check.returncode == 0

    study = spec(name="count")
    job = plan(study, parse_args(["count"]).runs, kept_root=default_out("count") / "runs")[0]
    assert ignored(job.run_dir / "study.json")
    assert not ignored(job.kept_dir / "study.json")


def test_a_run_that_needs_weights_of_a_kept_only_run_retrains_that_run_first(tmp_path):
    from experiments.study.__main__ import finished_readings

    chained = spec(arms={"a": ["caption=asp"], "then": ["caption=count_last"]},
                   arm_after={"then": "a"}, seeds=[1])  # fmt: skip
    kept = tmp_path / "kept"
    jobs = plan(chained, tmp_path / "runs", kept_root=kept)
    run_jobs(jobs[:1], 1, lambda job: None, fake_launcher([]), poll_s=0)
    finished_readings(chained, jobs)
    shutil.rmtree(tmp_path / "runs")
    calls: list = []
    run_jobs(plan(chained, tmp_path / "runs", kept_root=kept), 1, lambda job: None,
             fake_launcher(calls), poll_s=0)  # fmt: skip
    assert [c[-2].rsplit("/", 2)[-2] for c in calls] == ["a", "then"]
    finished_readings(chained, jobs)
    kept_marker = (kept / "then" / "seed1" / "study.json").read_text()
    assert "init_from=RUNS_ROOT/t/a/seed1" in kept_marker and str(tmp_path) not in kept_marker
    moved = plan(chained, tmp_path / "elsewhere", kept_root=kept)  # another checkout
    assert all(job.is_done() for job in moved)


def test_a_study_run_in_parts_reports_every_part_and_the_command_for_all(tmp_path):
    from experiments.study.__main__ import main

    definition = tmp_path / "t.yaml"
    definition.write_text(
        "name: t\nquestion: q\narms: {a: [caption=asp], b: [caption=count_last], c: []}\n"
        "baseline: a\nseeds: [1]\nsteps: 3\ncommon: [experiment=smoke]\nmetrics: [count/exact]\n"
    )
    out = tmp_path / "out"
    study = load_study(str(definition))
    jobs = [j for j in plan(study, tmp_path / "one", kept_root=out / "runs") if j.arm != "c"]
    run_jobs(jobs, 2, lambda job: None, fake_launcher([]), 0)  # the first part: a and b
    args = [str(definition), "--arms", "a", "b", "--collect-only", "--runs", str(tmp_path / "one"),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    args = [str(definition), "--arms", "c", "--collect-only", "--runs", str(tmp_path / "two"),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0  # a later part, with the first part's runs folder gone
    result = json.loads((out / "results.json").read_text())
    assert sorted(result["arms"]) == ["a", "b"]  # c never ran; a and b come from kept readings
    assert result["command"] == (
        f"python -m experiments.study {definition} --runs {tmp_path / 'two'} --out {out}"
    )


def test_an_arm_others_start_from_exports_and_is_rerun_to_export_when_it_did_not(tmp_path):
    chained = spec(arms={"a": ["caption=asp"], "then": ["caption=count_last"]},
                   arm_after={"then": "a"}, seeds=[1],
                   common=["experiment=smoke", "export=false"])  # fmt: skip
    jobs = plan(chained, tmp_path)
    assert jobs[0].overrides[-1] == "export=true" and "export=true" not in jobs[1].overrides
    without_export = [o for o in jobs[0].overrides if o != "export=true"]
    run_jobs([dataclasses.replace(jobs[0], overrides=without_export)], 1, lambda job: None,
             fake_launcher([]), poll_s=0)  # fmt: skip
    first_wall = jobs[0].marker()["wall_s"]
    calls: list = []
    run_jobs(plan(chained, tmp_path), 1, lambda job: None, fake_launcher(calls), poll_s=0)
    assert [c[-2].rsplit("/", 2)[-2] for c in calls] == ["a", "then"]  # a reran to export
    from experiments.study.report import steps_line

    assert steps_line(chained, ["a", "then"]) == "steps: a 3, then 3 after a"
    assert steps_line(spec(), ["a", "b"]) == "3 steps each"
    assert jobs[0].marker()["wall_s"] == first_wall  # its cost is its first run's


def test_the_cards_three_to_five_reading_counts_only_images_asked_for_three():
    rows = [record(3, 3), record(3, 5), record(3, 6), record(3, 2), record(1, 4)]
    assert METRICS["count/3to5@3"][1](columns([record_terms(r) for r in rows])) == 0.5
