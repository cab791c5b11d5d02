"""Ablation configs compose into their intended arms; the collector's tables and CIs are right."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from experiments.ablations import collect, run_ablation
from ymn.paths import CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent

# experiment → (arm key, the arms its sweep must produce)
EXPECTED = {
    "ablation_count": ("caption", ["asp", "count_last", "count_absent", "count_words"]),
    "ablation_grid_tokens": ("caption", ["asp", "grid_words", "grid3"]),
    "ablation_grid_balance": ("data.prepare.pack.multiply_from", ["none", "weights"]),
    "ablation_grid_focus": ("caption", ["asp", "short"]),
    "ablation_characters": ("sweep/characters", ["all", "max3", "max1"]),
    "ablation_hands": ("sweep/hands", ["h5", "h0"]),
    "ablation_hands_real": ("sweep/hands_real", ["h5", "h0"]),
    "ablation_phase2": ("ablation.arm", ["phase1_only", "phase1_stage"]),
    "ablation_phase2_stage2": ("ablation.arm", ["phase2_stage"]),
    "ablation_cost": ("data.resolution", ["512", "640", "704"]),
}


def sweep_jobs(experiment: str, extra: list[str] | None = None) -> list[list[str]]:
    """The per-job override lists Hydra's basic sweeper makes from hydra.sweeper.params."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"experiment={experiment}", *(extra or [])],
            return_hydra_config=True,
        )
    args = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    axes = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [f"{o.get_key_element()}={o.get_value_element_as_str()}"]
        for o in OverridesParser.create().parse_overrides(args)
    ]
    return [list(job) for job in itertools.product(*axes)]  # the basic sweeper's order


def compose_job(experiment: str, job: list[str]) -> DictConfig:
    """One sweep job's config with ${hydra:...} resolvable, tags resolved."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config", overrides=[f"experiment={experiment}", *job], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    OmegaConf.resolve(cfg.tags)
    OmegaConf.resolve(cfg.ablation)
    return cfg


def test_every_ablation_has_a_config() -> None:
    names = {p.stem for p in (CONFIG_DIR / "experiment").glob("ablation_*.yaml")}
    assert names - {"ablation_base"} == set(EXPECTED)
    for name in run_ablation.ABLATIONS:
        assert f"ablation_{name}" in EXPECTED


@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_sweep_params_give_the_intended_arms(experiment: str) -> None:
    key, arms = EXPECTED[experiment]
    jobs = sweep_jobs(experiment)
    seeds = sorted({o.split("=", 1)[1] for job in jobs for o in job if o.startswith("seed=")})
    assert seeds == ["1", "2", "3"]
    found = [o.split("=", 1)[1] for job in jobs for o in job if o.split("=", 1)[0] == key]
    assert sorted(set(found)) == sorted(arms)
    assert len(jobs) == 3 * len(arms)  # arms × seeds, nothing else swept


@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_each_arm_composes_at_toy_scale(experiment: str) -> None:
    extra = ["init_from=/tmp/x"] if experiment.endswith("stage2") else []
    arm_names = set()
    for job in (j for j in sweep_jobs(experiment) if "seed=1" in j):
        cfg = compose_job(experiment, [*job, *extra])
        assert cfg.model.components.name == "tiny"
        assert cfg.data._target_.endswith("YmnDataModule")
        assert list(cfg.logger) == ["csv"]
        assert cfg.tags[0].startswith("ablation_")
        assert cfg.callbacks.checkpoint is None
        arm_names.add(str(cfg.ablation.arm))
    assert len(arm_names) == len(EXPECTED[experiment][1])  # every arm is told apart in its runs


def test_arm_settings_reach_the_config() -> None:
    by_caption = {
        str(c.tags[1]): c.caption
        for c in (compose_job("ablation_count", j) for j in sweep_jobs("ablation_count")[:4])
    }
    assert by_caption["caption=count_last"].count_position == "last"
    assert by_caption["caption=count_words"].count_spelling != "asp"
    hands = {
        c.ablation.arm: c
        for c in (compose_job("ablation_hands", [f"sweep/hands={a}"]) for a in ("h5", "h0"))
    }
    assert hands["h5"].data.prepare.tree.hands == 0.05
    assert hands["h0"].data.prepare.tree.hands == 0.0
    assert hands["h0"].data.prepare.tree.regularization == 0.5
    assert hands["h5"].data.shards != hands["h0"].data.shards  # each arm packs its own shards
    max1 = compose_job("ablation_characters", ["sweep/characters=max1"])
    assert max1.data.prepare.tree["screenshots/5_characters"] == 0.0
    assert max1.data.prepare.tree.screenshots == 0.3
    phase = {
        a: compose_job("ablation_phase2", [f"ablation.arm={a}"]).trainer.max_steps
        for a in ("phase1_only", "phase1_stage")
    }
    stage2 = compose_job("ablation_phase2_stage2", ["init_from=/tmp/x"]).trainer.max_steps
    assert phase["phase1_only"] == phase["phase1_stage"] + stage2  # equal total steps


def test_full_scale_overlay_composes() -> None:
    job = [
        "+sweep/scale=full",
        "model.components.pretrained=/m",
        "data.shards=/s",
        "caption=count_last",
    ]
    cfg = compose_job("ablation_count", job)
    assert cfg.model.components.name == "sd15"
    assert cfg.data.resolution == 640 and cfg.data.shards == "/s"
    assert cfg.data.prepare.synth is None
    assert cfg.model.optimizer.lr == 1.0e-6


# ---------------------------------------------------------------------------- the collector


def fake_run(root: Path, arm: str, seed: int, acc: float, loss: float) -> Path:
    run = root / f"{arm}_{seed}"
    (run / "probes").mkdir(parents=True)
    (run / "csv").mkdir()
    cfg = {"seed": seed, "ablation": {"name": "t", "arm": arm}}
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    early = {"metrics": {"probe/count/exact_acc": 0.0}, "records": []}
    (run / "probes" / "step_000000.json").write_text(json.dumps(early))
    records = [
        {"count": 1, "detected_count": 1},
        {"count": 2, "detected_count": 2 if acc > 0.5 else 1},
    ]
    metrics = {
        "probe/count/exact_acc": acc,
        "probe/linear/count_acc/mid/t500": acc,
        "probe/linear/shuffled/count_acc/mid/t500": 0.1,
        "probe/count/mean_detected/1": 1.0,
    }
    (run / "probes" / "step_000010.json").write_text(
        json.dumps({"metrics": metrics, "records": records})
    )
    with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "train/loss", "val/loss", "perf/images_per_sec"])
        writer.writerow([5, 0.3, "", 2.0])
        writer.writerow([10, "", loss + 1, ""])
        writer.writerow([10, "", loss, 4.0])
    return run


def test_t_interval_matches_the_formula() -> None:
    stat = collect.t_interval([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert stat["mean"] == pytest.approx(7 / 3)
    assert stat["ci95"] == pytest.approx(4.302652729911275 * sd / math.sqrt(3))
    assert collect.t_interval([5.0])["ci95"] is None
    assert collect.t_interval([])["n"] == 0


def test_collector_builds_the_table(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for seed, (acc_a, acc_b) in enumerate([(0.2, 0.6), (0.4, 0.8), (0.3, 0.9)], start=1):
        fake_run(sweep, "caption=asp", seed, acc_a, 1.0 + seed)
        fake_run(sweep, "caption=count_last", seed, acc_b, 0.5)
    runs = [collect.read_run(p) for p in collect.find_runs([sweep])]
    assert len(runs) == 6
    md, js = collect.write_tables("t", runs, tmp_path / "out", ["a note"])
    data = json.loads(js.read_text())
    asp = data["arms"]["caption=asp"]["metrics"]
    assert asp["probe/count/exact_acc"]["mean"] == pytest.approx(0.3)  # last probe step only
    assert asp["probe/count/exact_acc"]["ci95"] == pytest.approx(4.302652729911275 * 0.1 / 3**0.5)
    assert asp["val/loss"]["values"] == [2.0, 3.0, 4.0]  # the last val/loss row of each run
    assert asp["perf/images_per_sec"]["mean"] == pytest.approx(3.0)
    assert asp["success/2"]["mean"] == 0.0
    assert data["arms"]["caption=count_last"]["metrics"]["success/2"]["mean"] == 1.0
    assert data["arms"]["caption=asp"]["seeds"] == [1, 2, 3]
    assert "probe/linear/shuffled/count_acc/mid/t500" not in asp  # controls are not table rows
    text = md.read_text()
    assert "| count exact accuracy | 0.3 ± 0.248 (n=3) | 0.767 ± " in text
    assert "| exact accuracy, asked 2 |" in text and "not evidence" in text
    assert "a note" in text


def test_read_run_names_a_missing_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config_resolved.yaml"):
        collect.read_run(tmp_path)


def test_full_command_names_the_real_model_and_data() -> None:
    for name in run_ablation.ABLATIONS:
        command = run_ablation.full_command(name)
        assert "+sweep/scale=full" in command and "model.components.pretrained=" in command
        assert "--multirun" in command
