"""`make demo`: the toy fine-tune of the general tiny base, phase 1 then phase 2, on CPU.

Runs `demo_phase1` (the card's captions meet the base on unseen synthetic scenes, from cached
latents) and `demo_phase2` (phase 2 captions at 144 px from phase 1's export), then prints the
probe readings before and after — the named lead drawn, exact count, face-grid cell, identity,
each with its 95 % interval and k/n — and where the sample grids, metrics and models are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ymn.probes.scores import format_reading, headline_readings
from ymn.run_dir import probe_pass_files


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


def probe_passes(run_dir: Path) -> list[dict]:
    """The run's probe passes in step order."""
    return [json.loads(p.read_text()) for p in probe_pass_files(run_dir)]


def readings_table(run_dirs: dict[str, Path]) -> tuple[str, dict]:
    """Readings of the first pass (the base) and each phase's last pass, as text and JSON."""
    columns: dict[str, dict] = {}
    for name, run_dir in run_dirs.items():
        passes = probe_passes(run_dir)
        if not passes:
            continue
        if not columns:
            columns[f"base (step {passes[0]['step']})"] = headline_readings(passes[0]["records"])
        columns[f"{name} (step {passes[-1]['step']})"] = headline_readings(passes[-1]["records"])
    if not columns:
        return "no probe passes were written", {}
    names = list(next(iter(columns.values())))
    lines = ["reading: value [95% CI] (k/n)"]
    for column, readings in columns.items():
        lines.append(f"  {column}")
        lines += [f"    {name:30s} {format_reading(readings[name])}" for name in names]
    return "\n".join(lines), columns


def summary(run_dir: Path) -> str:
    """Where a phase left its outputs."""
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    rows = [
        ("last sample grid", grids[-1] if grids else run_dir / "samples"),
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
    text, payload = readings_table({"phase 1": phase1, "phase 2": phase2})
    (args.out / "readings.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    for name, run_dir in (("Phase 1", phase1), ("Phase 2", phase2)):
        print(f"{name}: {run_dir}\n{summary(run_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
