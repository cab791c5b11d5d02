"""`make demo`: the recipe at toy scale — phase 1 then phase 2 from phase 1's export — on CPU.

Runs `demo_phase1` and `demo_phase2` (tiny pretrained base, synthetic multi-character shards
made by ymn-synth + ymn-pack on first use) and prints where samples, metrics and models are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def run_phase(experiment: str, run_dir: Path, extra: list[str]) -> None:
    """One `ymn-train` run in its own process (a fresh Hydra and Lightning state per phase)."""
    command = [
        sys.executable,
        "-m",
        "ymn.train",
        f"experiment={experiment}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def summary(run_dir: Path) -> str:
    """Where a phase left its outputs."""
    rows = [
        ("samples", run_dir / "samples"),
        ("probe metrics (JSON)", run_dir / "probes"),
        ("metrics (CSV)", run_dir / "csv" / "metrics.csv"),
        ("wandb offline run", run_dir / "wandb"),
        ("exported model (diffusers)", run_dir / "export" / "diffusers"),
        ("exported model (single file)", run_dir / "export" / "model.safetensors"),
    ]
    return "\n".join(f"  {name:30s} {path}" for name, path in rows if path.exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both phases")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    phase1, phase2 = args.out / "phase1", args.out / "phase2"
    run_phase("demo_phase1", phase1, args.overrides)
    run_phase("demo_phase2", phase2, [f"init_from={phase1}", *args.overrides])
    minutes = (time.perf_counter() - started) / 60
    print(f"\nDemo finished in {minutes:.1f} min.")
    for name, run_dir in (("Phase 1", phase1), ("Phase 2", phase2)):
        print(f"{name}: {run_dir}\n{summary(run_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
