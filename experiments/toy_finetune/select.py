"""Choose a toy fine-tune's end point on validation seeds; read it on seeds the choice never saw.

    python -m experiments.toy_finetune.select RUN_DIR [--also RUN_DIR ...] [--test-seeds 64]
        [--out DIR]

A run of `experiment=toy_phase1_select` probes the named lead (`1person, <name>`, the probes'
`probe/identity/drawn/n1`) on sampling seeds 64-127 every 300 steps and keeps a checkpoint at
each. This picks the step where that validation reading is highest (the earliest of ties, as
the run's best.ckpt does), then samples the same prompts on the test seeds 0..N-1 (the seeds of
every other toy reading) at that checkpoint: the reported number never took part in the choice.
Selecting on the test seeds themselves would report the maximum of nine noisy readings.

--also: further folders of the same training run (same seed and settings; only the probe seeds
may differ) whose step checkpoints have no validation reading: those checkpoints are probed on
the validation seeds first (e.g. the later checkpoints of a first run, when the early steps were
retrained with validation probes; the runs' train/loss columns must then agree step for step).

Writes `selected.json` into --out (default RUN_DIR/select): the validation reading per step
(k, n, Wilson 95 % interval), the chosen step and the test reading there, and, when the chosen
step is not the last, the test reading at the last step and chosen − last paired on the same
images (bootstrap CI, permutation p); the last step's test pass is a folder's own when one
holds it (a run whose own probes read the test seeds), else sampled here. The probe passes it
samples go to --out/validation/probes and --out/test/probes.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments.toy_finetune.curve import compare
from experiments.toy_finetune.names import run_components, step_of
from ymn.probes.scores import headline_readings
from ymn.run_dir import probe_paths

LEAD_READING = "lead drawn (1person, <name>)"


def lead_reading(report_path: Path) -> dict[str, Any]:
    """The named-lead reading (k, n, CI) of one probe pass's JSON report."""
    report = json.loads(report_path.read_text())
    return headline_readings(report["records"])[LEAD_READING]


def probed_seeds(report_path: Path) -> list[int]:
    return [int(s) for s in json.loads(report_path.read_text())["config"]["seeds"]]


def step_checkpoints(run_dirs: list[Path]) -> dict[int, Path]:
    """step -> checkpoint over the run folders (the first folder wins a step both hold)."""
    found: dict[int, Path] = {}
    for run_dir in run_dirs:
        for path in sorted((run_dir / "checkpoints").glob("step*.ckpt")):
            found.setdefault(step_of(path), path)
    return found


def probe_checkpoint(cfg: Any, checkpoint: Path, seeds: list[int], out_dir: Path) -> Path:
    """One sample-only probe pass of the run's probe prompts on `seeds` at `checkpoint` (EMA
    UNet when the checkpoint keeps one); returns its JSON report (reused when already there)."""
    from hydra.utils import instantiate

    from ymn.probes.detectors import load_detector
    from ymn.probes.prompts import config_prompts
    from ymn.probes.runner import run_probe_pass

    step = step_of(checkpoint)
    report_path = probe_paths(out_dir, step)[0]
    if report_path.is_file() and probed_seeds(report_path) == seeds:
        return report_path
    probe_cfg = instantiate(cfg.probes, seeds=seeds, teacher_forced=False, linear=False)
    module = instantiate(cfg.model, _partial_=True, _convert_="partial")(
        components=run_components(cfg, checkpoint)
    )
    run_probe_pass(
        module,
        step=step,
        out_dir=out_dir,
        detector=load_detector(probe_cfg.detector, **probe_cfg.detector_kwargs),
        prompts=config_prompts(probe_cfg),
        heldout_batches=None,
        cfg=probe_cfg,
    )
    return report_path


def validation_readings(
    cfg: Any, run_dirs: list[Path], checkpoints: dict[int, Path], seeds: list[int], out_dir: Path
) -> dict[int, dict[str, Any]]:
    """step -> the lead reading on the validation seeds, for every step with a checkpoint: the
    run's own probe pass when it read those seeds, else a pass sampled here."""
    readings = {}
    for step, checkpoint in sorted(checkpoints.items()):
        own = probe_paths(run_dirs[0], step)[0]
        if not (own.is_file() and probed_seeds(own) == seeds):
            own = probe_checkpoint(cfg, checkpoint, seeds, out_dir)
        readings[step] = lead_reading(own)
    return readings


def test_pass_at(run_dirs: list[Path], step: int, test_seeds: list[int]) -> Path | None:
    """A probe pass a run folder wrote at `step` on the test seeds (the run's own curve, when
    it was trained with the probes on those seeds), or None."""
    for run_dir in run_dirs:
        path = probe_paths(run_dir, step)[0]
        if path.is_file() and probed_seeds(path) == test_seeds:
            return path
    return None


def against_last(
    cfg: Any,
    run_dirs: list[Path],
    last_checkpoint: Path,
    chosen_pass: Path,
    test_seeds: list[int],
    out_dir: Path,
) -> dict[str, Any]:
    """The test reading at the run's last step and chosen − last paired on the same images:
    a folder's own last-step pass on the test seeds when there is one, else one sampled here."""
    last = step_of(last_checkpoint)
    last_pass = test_pass_at(run_dirs, last, test_seeds)
    if last_pass is None:
        last_pass = probe_checkpoint(cfg, last_checkpoint, test_seeds, out_dir)
    records = [json.loads(p.read_text())["records"] for p in (last_pass, chosen_pass)]
    return {
        "last_step": last,
        "test_at_last_step": headline_readings(records[0])[LEAD_READING],
        "chosen_minus_last": compare(*records)[LEAD_READING],
    }


def chosen_step(readings: dict[int, dict[str, Any]]) -> int:
    """The step with the highest validation reading; the earliest of ties."""
    return max(sorted(readings), key=lambda step: readings[step]["value"])


def train_losses(run_dir: Path) -> dict[str, str]:
    """step -> train/loss as the run's CSV logger wrote it (text: compared exactly)."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return {r["step"]: r["train/loss"] for r in csv.DictReader(handle) if r.get("train/loss")}


def check_same_training(run_dirs: list[Path]) -> int:
    """The number of logged steps at which every folder's train/loss equals the first's; a
    ValueError at the first that differs (the folders are not one training run)."""
    first = train_losses(run_dirs[0])
    compared = 0
    for other in run_dirs[1:]:
        losses = train_losses(other)
        for step in sorted(set(first) & set(losses), key=int):
            if first[step] != losses[step]:
                raise ValueError(
                    f"{other.name} is not the same training as {run_dirs[0].name}: train/loss "
                    f"at step {step} is {losses[step]} against {first[step]}"
                )
            compared += 1
    return compared


def select(run_dirs: list[Path], test_seeds: list[int], out_dir: Path) -> dict[str, Any]:
    compared = check_same_training(run_dirs) if len(run_dirs) > 1 else 0
    cfg = OmegaConf.load(run_dirs[0] / "config_resolved.yaml")
    seeds = [int(s) for s in OmegaConf.to_container(cfg.probes.seeds)]
    if set(seeds) & set(test_seeds):
        raise ValueError(
            f"the run's probes read seeds {seeds[0]}..{seeds[-1]}, which overlap the test seeds: "
            "train with experiment=toy_phase1_select (validation seeds 64-127)"
        )
    checkpoints = step_checkpoints(run_dirs)
    readings = validation_readings(cfg, run_dirs, checkpoints, seeds, out_dir / "validation")
    if not readings:
        raise FileNotFoundError(f"no checkpoints/step*.ckpt under {', '.join(map(str, run_dirs))}")
    step = chosen_step(readings)
    checkpoint = checkpoints[step]
    test_pass = probe_checkpoint(cfg, checkpoint, test_seeds, out_dir / "test")
    last = max(readings)
    return {
        "runs": [p.name for p in run_dirs],
        "train_loss_steps_compared": compared,
        "validation_seeds": [seeds[0], seeds[-1]],
        "test_seeds": [test_seeds[0], test_seeds[-1]],
        "validation": {str(s): r for s, r in readings.items()},
        "chosen_step": step,
        "chosen_checkpoint": f"{checkpoint.parent.parent.name}/checkpoints/{checkpoint.name}",
        "test": lead_reading(test_pass),
    } | (
        against_last(cfg, run_dirs, checkpoints[last], test_pass, test_seeds, out_dir / "test")
        if last != step
        else {}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="same run, more steps")
    parser.add_argument("--test-seeds", type=int, default=64, help="test on seeds 0..N-1")
    parser.add_argument("--out", type=Path, help="default: RUN_DIR/select")
    args = parser.parse_args(argv)
    out_dir = args.out or args.run_dir / "select"
    result = select([args.run_dir, *args.also], list(range(args.test_seeds)), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "selected.json").write_text(json.dumps(result, indent=2) + "\n")
    test = result["test"]
    print(
        f"chosen step {result['chosen_step']} (validation "
        f"{result['validation'][str(result['chosen_step'])]['value']:.2f}); test "
        f"{test['value']:.2f} [{test['ci95'][0]:.2f}, {test['ci95'][1]:.2f}] "
        f"({test['k']}/{test['n']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
