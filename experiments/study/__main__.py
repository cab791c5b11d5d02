"""`python -m experiments.study NAME`: run a study's arms × seeds and write its results.

    python -m experiments.study --list
    python -m experiments.study count                      # run (or continue) and report
    python -m experiments.study count --parallel 2 --seeds 1 2 3 --steps 1200
    python -m experiments.study count --arms token_first token_last   # a part of it
    python -m experiments.study count --collect-only       # re-read finished runs
    python -m experiments.study count --full-command       # the SD 1.5 command

Runs go to `runs/studies/NAME/ARM/seedK/`, results to `experiments/studies/NAME/`
(RESULTS.md, results.json, PNGs), rewritten after every finished run, with each finished run's
reading kept in `experiments/studies/NAME/runs/` (committed: a study run in parts, `--arms`,
keeps every part's runs; the table holds every arm with a reading). A killed study continues
where it stopped: finished runs are reused and a half-done run resumes from its checkpoint.
Extra `key=value` arguments are Hydra overrides given to every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from experiments.study.readings import RunReading, read_run
from experiments.study.report import write_results
from experiments.study.runner import Job, keep_reading, plan, run_jobs
from experiments.study.spec import (
    StudySpec,
    StudySpecError,
    available_studies,
    load_study,
    only_arms,
)

REPO = Path(__file__).resolve().parents[2]


def default_out(name: str) -> Path:
    """Where a study's results and its kept run readings (`runs/` inside it) are committed."""
    return REPO / "experiments" / "studies" / name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.study", description=__doc__.splitlines()[0]
    )
    parser.add_argument("name", nargs="?", help="a study in ymn/conf/study, or a .yaml path")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="runs at once")
    parser.add_argument("--seeds", type=int, nargs="+", help="replace the study's seeds")
    parser.add_argument("--steps", type=int, help="replace the study's steps per run")
    parser.add_argument("--arms", nargs="+", help="run only these arms (the report keeps all)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "studies")
    parser.add_argument("--out", type=Path, help="default: experiments/studies/NAME")
    parser.add_argument("--collect-only", action="store_true", help="report finished runs only")
    parser.add_argument("--full-command", action="store_true", help="print the SD 1.5 command")
    return parser.parse_args(argv)


def finished_readings(
    spec: StudySpec, jobs: list[Job]
) -> tuple[list[RunReading], dict[str, list[float]]]:
    """Readings and wall times of the jobs that have finished."""
    readings, walls = [], {}
    for job in jobs:
        if job.finished_here():
            keep_reading(job)
        if job.is_done():
            readings.append(read_run(job.reading_dir(), job.arm, job.seed, spec.metrics))
            marker = job.marker()
            if not marker.get("resumed"):  # a resumed launch's time is only part of the run
                walls.setdefault(job.arm, []).append(marker["wall_s"])
    return readings, walls


def reproducing(args: argparse.Namespace, argv: list[str] | None) -> list[str]:
    """The arguments of the command that reproduces the table: the table holds every arm with
    a finished or kept run, so `--arms` and `--collect-only` are left out (without them the
    command reuses finished runs and also runs the missing ones)."""
    given = argv if argv is not None else sys.argv[1:]
    shown, skipping = [], False
    for arg in given:
        if arg.startswith("--"):
            skipping = arg == "--arms"
        if not skipping and arg != "--collect-only":
            shown.append(arg)
    return shown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list or not args.name:
        print("\n".join(available_studies()))
        return 0
    try:
        spec = load_study(args.name)
        running = set(only_arms(spec, args.arms).arms if args.arms else spec.arms)
    except StudySpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.full_command:
        print(spec.full_command)
        return 0
    spec = dataclasses.replace(spec, seeds=args.seeds or spec.seeds, steps=args.steps or spec.steps)
    out = args.out or default_out(spec.name)
    jobs = plan(spec, args.runs, args.overrides, kept_root=out / "runs")
    command = " ".join(["python -m experiments.study", *reproducing(args, argv)])

    def report(_: Job | None = None) -> None:
        readings, walls = finished_readings(spec, jobs)
        if readings:
            written = write_results(spec, readings, walls, out, command)
            print(f"results ({len(readings)}/{len(jobs)} runs): {written}", flush=True)

    chosen = [job for job in jobs if job.arm in running]
    failed = [] if args.collect_only else run_jobs(chosen, args.parallel, report)
    report()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
