"""Run one failure ablation at toy scale on CPU and tabulate it.

    python -m experiments.ablations.run_ablation count --seeds 1 2 --steps 4
    python -m experiments.ablations.run_ablation count --full-command   # the SD 1.5 GPU command

Runs `ymn-train --multirun experiment=ablation_NAME seed=... trainer.max_steps=N ...` into
`multirun/ablation_NAME/<time>/`, then writes experiments/ablations/NAME.{md,json} (mean ± 95 %
t-interval over seeds per arm). `phase2` chains two runs per seed (`grid_balance` lays the
images out by face cell in its data preparation); `cost` runs at toy sizes 128/160/176 (the
ratio of 512/640/704).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments.ablations.collect import find_runs, read_run, write_tables

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

ABLATIONS = (
    "count",
    "grid_tokens",
    "grid_balance",
    "grid_focus",
    "characters",
    "hands",
    "phase2",
    "cost",
)
FULL = (
    "ymn-train --multirun experiment=ablation_{name} +sweep/scale=full "
    "model.components.pretrained=/models/sd15 data.shards=/data/ymn/shards"
)
FULL_SPECIAL = {
    "hands": "ymn-train --multirun experiment=ablation_hands_real +sweep/scale=full "
    "model.components.pretrained=/models/sd15 data.prepare.root=/data/asp/processed "
    "'data.shards=/data/ymn/hands_${ablation.arm}/shards'",
    "cost": FULL.format(name="cost") + " trainer.max_steps=200 probes=off",
}


def full_command(name: str) -> str:
    """The full-scale SD 1.5 GPU command of an ablation (paths are placeholders)."""
    return FULL_SPECIAL.get(name, FULL.format(name=name))


def ymn_train() -> str:
    """The ymn-train console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("ymn-train")
    return str(script) if script.is_file() else "ymn-train"


def train(overrides: Sequence[str], multirun: bool = True) -> None:
    """Run ymn-train in the repo root with 1 thread per process; raise when it fails."""
    cmd = [ymn_train(), *(["--multirun"] if multirun else []), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def step_overrides(steps: int) -> list[str]:
    """Train N steps, validate and probe at the end."""
    return [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]


def run_phase2(seeds: Sequence[int], steps: int, sweep: Path, extra: Sequence[str]) -> list[Path]:
    """Per seed: phase1_only (2N steps) and phase1_stage (N) → phase2_stage (N, init_from)."""
    seed_list = ",".join(map(str, seeds))
    budget = [
        f"ablation.steps.phase1_only={2 * steps}",
        f"ablation.steps.phase1_stage={steps}",
        f"ablation.steps.phase2_stage={steps}",
        f"trainer.val_check_interval={steps}",
    ]
    stage1 = sweep / "phase1"
    train(
        [
            "experiment=ablation_phase2",
            f"seed={seed_list}",
            f"hydra.sweep.dir={stage1}",
            *budget,
            *extra,
        ]
    )
    stage2 = sweep / "phase2"
    for run in find_runs([stage1]):
        result = read_run(run)
        if result.arm != "phase1_stage":
            continue
        train(
            [
                "experiment=ablation_phase2_stage2",
                f"seed={result.seed}",
                f"init_from={run}",
                f"hydra.run.dir={stage2 / f'seed{result.seed}'}",
                *budget,
                *extra,
            ],
            multirun=False,
        )
    return [stage1, stage2]


def run(name: str, seeds: Sequence[int], steps: int, extra: Sequence[str]) -> list[Path]:
    """Run the toy sweep of one ablation; return the sweep directories to collect."""
    sweep = REPO / "multirun" / f"ablation_{name}" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if name == "phase2":
        return run_phase2(seeds, steps, sweep, extra)
    overrides = [f"experiment=ablation_{name}", f"seed={','.join(map(str, seeds))}"]
    if name == "cost":
        overrides.append("data.resolution=128,160,176")
    train([*overrides, *step_overrides(steps), f"hydra.sweep.dir={sweep}", *extra])
    return [sweep]


def collect(name: str, sweeps: Sequence[Path], steps: int | None, out: Path) -> Path:
    """Tabulate the finished runs (phase2: without the intermediate phase1_stage runs)."""
    runs = [read_run(p) for p in find_runs(sweeps)]
    runs = [r for r in runs if r.arm != "phase1_stage"]
    where = ", ".join(
        str(s.relative_to(REPO)) if s.is_relative_to(REPO) else str(s) for s in sweeps
    )
    notes = [f"Toy scale: tiny base, synthetic data, CPU; sweep dirs: {where}."]
    if steps is not None:
        total = f"; 2×{steps} in total per arm" if name == "phase2" else ""
        notes.append(f"{steps} training steps per run{total}; probes=fast (few images per count).")
    notes.append(f"Full scale (GPU): `{full_command(name)}`")
    md, _ = write_tables(name, runs, out, notes)
    return md


def main(argv: list[str] | None = None) -> int:
    """CLI: run_ablation.py NAME [--seeds ...] [--steps N] [--full-command] [--collect DIR...]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=ABLATIONS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, help="training steps per run (default 200)")
    parser.add_argument("--full-command", action="store_true", help="print the GPU command")
    parser.add_argument("--collect", type=Path, nargs="+", help="only tabulate these sweep dirs")
    parser.add_argument(  # a smoke table of the sweep; toy evidence is experiments/studies/
        "--out", type=Path, default=REPO / "runs" / "ablations", help="where NAME.md/.json go"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_intermixed_args(argv)
    if args.full_command:
        print(full_command(args.name))
        return 0
    steps = args.steps or (None if args.collect else 200)
    sweeps = args.collect or run(args.name, args.seeds, steps, args.overrides)
    md = collect(args.name, sweeps, steps, args.out)
    print(f"wrote {md} and {md.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
