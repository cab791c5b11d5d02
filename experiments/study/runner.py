"""Run a study's arms × seeds as `ymn-train` processes, several at once, resumably.

Each run lives in `RUNS/NAME/ARM/seedK/`. A run whose `study.json` says it finished with the
same overrides is reused; any other run is (re)started with `ckpt_path=last`, so a run killed
half-way continues exactly from its last checkpoint and a run never started begins fresh. Runs
that share a data folder wait until the first of them has built it (shards, latent cache), so
parallel runs never prepare the same files at once.

`runs/` is scratch; a finished run's reading (its marker, probe passes and metrics CSV, not its
weights) is also kept beside the study's results (`experiments/studies/NAME/runs/`), where it
counts as finished: a study committed in parts keeps every part. A run that starts from another
run's weights (`after`) has that run retrained when only its reading was kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from experiments.study.spec import StudySpec
from ymn.run_dir import diffusers_export, latest_checkpoint, probe_paths

MARKER = "study.json"
RUNS_ROOT = "RUNS_ROOT"  # the runs folder's place in a kept marker
# How a run is named, logged and exported: not its numbers.
NOT_DEFINING = frozenset({"name", "group", "tags", "logger", "export"})
Launcher = Callable[[list[str], Path, dict[str, str]], subprocess.Popen]


class StaleRunError(RuntimeError):
    """A run directory holds a finished run made with other settings."""


@dataclass
class Job:
    """One (arm, seed) run of a study."""

    arm: str
    seed: int
    run_dir: Path
    overrides: list[str]
    data_marker: Path | None = None
    steps: int = 0  # the step it trains to; its reading is the probe pass there
    after: Job | None = None  # starts from this job's finished run (init_from)
    kept_dir: Path | None = None  # where its finished reading is kept (committed)
    started: float = 0.0
    resumed: bool = False  # its last launch continued from a checkpoint of an earlier one
    process: subprocess.Popen | None = field(default=None, repr=False)

    def portable(self, overrides: Sequence[str]) -> list[str]:
        """Overrides with this machine's runs folder written as RUNS_ROOT (a kept marker is
        committed; `init_from` points into the runs folder)."""
        root = str(self.run_dir.parents[2])
        return [o.replace(root, RUNS_ROOT) for o in overrides]

    def reading_dir(self) -> Path:
        """The run folder when it holds a finished run, else the kept reading's folder."""
        if self.finished_here() or self.kept_dir is None:
            return self.run_dir
        return self.kept_dir

    def finished_here(self) -> bool:
        return (self.run_dir / MARKER).is_file()

    def wrote_final_pass(self) -> bool:
        """The run folder holds the probe pass of its final step, what its reading is."""
        return probe_paths(self.run_dir, self.steps)[0].is_file()

    def has_weights(self) -> bool:
        """Finished here with its exported model, what a run starting from it loads."""
        return self.finished_here() and diffusers_export(self.run_dir) is not None

    def marker(self) -> dict | None:
        path = self.reading_dir() / MARKER
        return json.loads(path.read_text()) if path.is_file() else None

    def is_done(self) -> bool:
        """Finished with these overrides; StaleRunError when finished with others."""
        marker = self.marker()
        if marker is None:
            return False
        if defining(self.portable(marker["overrides"])) != defining(self.portable(self.overrides)):
            raise StaleRunError(
                f"{self.run_dir} holds a finished run with other overrides "
                f"({marker['overrides']} vs {self.overrides}); delete it to rerun this arm"
            )
        return True


def ymn_train() -> str:
    """The ymn-train console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("ymn-train")
    return str(script) if script.is_file() else "ymn-train"


def run_overrides(spec: StudySpec, arm: str, seed: int, extra: Sequence[str] = ()) -> list[str]:
    """The Hydra overrides that define a run (what `study.json` records)."""
    return [
        *spec.common,
        *spec.arms[arm],
        f"seed={seed}",
        f"trainer.max_steps={spec.steps_of(arm)}",
        f"name=study_{spec.name}_{arm}",
        f"group=study_{spec.name}",
        f"tags=[{arm}]",
        *extra,
    ]


def defining(overrides: Sequence[str]) -> list[str]:
    """The overrides that can change a run's numbers: naming, logging and export keys
    (NOT_DEFINING) are left out, so a finished run stays reusable when only those change."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NOT_DEFINING]


def _marker_of(cfg) -> Path | None:
    from omegaconf import OmegaConf

    latents = OmegaConf.select(cfg, "data.latents", default=None)
    if latents:
        return Path(latents) / "index.json"
    shards = OmegaConf.select(cfg, "data.shards", default=None)
    return Path(shards) / "manifest.json" if shards else None


def data_markers(override_lists: Sequence[Sequence[str]]) -> list[Path | None]:
    """Per override list, the file whose existence means its data is built (the latent index
    or the shard manifest); composed and validated once per distinct list (seed left out), so a
    bad arm fails before any run starts."""
    from hydra import compose, initialize_config_dir

    from ymn.paths import CONFIG_DIR
    from ymn.reliability.config_schema import validate_config

    keys = [
        tuple(o for o in overrides if not o.startswith("seed=")) for overrides in override_lists
    ]
    found: dict[tuple[str, ...], Path | None] = {}
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for key in dict.fromkeys(keys):
            cfg = compose("config", overrides=list(key))
            validate_config(cfg, choices={}, overrides=list(key))
            found[key] = _marker_of(cfg)
    return [found[key] for key in keys]


KEPT = ("study.json", "probes/step_*.json", "csv/metrics.csv")


def keep_reading(job: Job) -> None:
    """Copy what the report reads of a finished run to its kept folder (replacing an older
    copy): marker, probe passes, metrics CSV. A copy newer than the run's marker is current
    (a run's files do not change after its marker), so each report copies only new runs."""
    if job.kept_dir is None:
        return
    kept_marker = job.kept_dir / MARKER
    if (
        kept_marker.is_file()
        and kept_marker.stat().st_mtime >= (job.run_dir / MARKER).stat().st_mtime
    ):
        return
    shutil.rmtree(job.kept_dir, ignore_errors=True)
    for pattern in KEPT:
        for path in sorted(job.run_dir.glob(pattern)):
            target = job.kept_dir / path.relative_to(job.run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    marker = json.loads((job.run_dir / MARKER).read_text())
    marker["overrides"] = job.portable(marker["overrides"])
    (job.kept_dir / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def plan(
    spec: StudySpec, runs_root: Path, extra: Sequence[str] = (), kept_root: Path | None = None
) -> list[Job]:
    """Every job of the study, in run order; `extra` overrides go to every run; finished
    readings are kept under `kept_root/ARM/seedK` when it is given."""
    pairs = spec.jobs()
    override_lists = [run_overrides(spec, arm, seed, extra) for arm, seed in pairs]
    run_dirs = {(arm, seed): runs_root / spec.name / arm / f"seed{seed}" for arm, seed in pairs}
    starts = set(spec.arm_after.values())
    for (arm, seed), overrides in zip(pairs, override_lists, strict=True):
        if arm in spec.arm_after:
            overrides.append(f"init_from={run_dirs[spec.arm_after[arm], seed]}")
        if arm in starts:
            overrides.append("export=true")  # the next arm loads its exported model
    markers = data_markers(override_lists)
    jobs = {
        pair: Job(pair[0], pair[1], run_dirs[pair], overrides, marker,
                  steps=spec.steps_of(pair[0]),
                  kept_dir=kept_root / pair[0] / f"seed{pair[1]}" if kept_root else None)
        for pair, overrides, marker in zip(pairs, override_lists, markers, strict=True)
    }  # fmt: skip
    for (arm, seed), job in jobs.items():
        if arm in spec.arm_after:
            job.after = jobs[spec.arm_after[arm], seed]
    return list(jobs.values())


def popen(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start one run, its output appended to its log (a resumed run keeps the first part)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)


def command(job: Job) -> list[str]:
    return [ymn_train(), *job.overrides, f"hydra.run.dir={job.run_dir}", "ckpt_path=last"]


def _may_start(job: Job, running: Sequence[Job]) -> bool:
    """A job waits for the run it starts from, and while another job that shares its data
    folder is still building it."""
    if job.after is not None and not job.after.has_weights():
        return False
    if job.data_marker is None or job.data_marker.is_file():
        return True
    return all(other.data_marker != job.data_marker for other in running)


def to_run(jobs: Sequence[Job]) -> list[Job]:
    """The unfinished jobs, plus any finished one whose exported model an unfinished job starts
    from but which lacks it (only its reading was kept, or it ran without export: rerun, it
    resumes from its last checkpoint and exports); in plan order."""
    needed = {id(j) for j in jobs if not j.is_done()}
    for job in jobs:
        if id(job) in needed and job.after is not None and not job.after.has_weights():
            needed.add(id(job.after))
    return [j for j in jobs if id(j) in needed]


def run_jobs(
    jobs: Sequence[Job],
    parallel: int,
    on_finish: Callable[[Job], None],
    launcher: Launcher = popen,
    poll_s: float = 2.0,
) -> list[Job]:
    """Run the unfinished jobs, `parallel` at a time; call on_finish after each success.
    Returns the jobs that failed (their logs name why)."""
    pending = to_run(jobs)
    running: list[Job] = []
    failed: list[Job] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        while pending or running:
            for job in [j for j in pending if any(j.after is f for f in failed)]:
                print(f"SKIPPED {job.arm} seed {job.seed}: the run it starts from failed")
                pending.remove(job)
                failed.append(job)
            for job in list(pending):
                if len(running) < parallel and _may_start(job, running):
                    print(f"start {job.arm} seed {job.seed} → {job.run_dir}", flush=True)
                    job.started = time.perf_counter()
                    job.resumed = latest_checkpoint(job.run_dir) is not None
                    job.process = launcher(command(job), job.run_dir / "study.log", env)
                    pending.remove(job)
                    running.append(job)
            time.sleep(poll_s if running else 0)
            for job in list(running):
                code = job.process.poll() if job.process else 1
                if code is None:
                    continue
                running.remove(job)
                if code == 0 and job.wrote_final_pass():
                    _write_marker(job, time.perf_counter() - job.started)
                    on_finish(job)
                else:
                    why = f"exit {code}" if code else f"no probe pass at step {job.steps}"
                    print(f"FAILED {job.arm} seed {job.seed} ({why}): "
                          f"see {job.run_dir / 'study.log'}", flush=True)  # fmt: skip
                    failed.append(job)
    except KeyboardInterrupt:
        for job in running:
            if job.process is not None:
                job.process.terminate()  # ymn-train checkpoints on SIGTERM; rerun resumes
        raise
    return failed


def _write_marker(job: Job, wall_s: float) -> None:
    """`wall_s` is the last launch's time; `resumed` says whether that launch continued a
    killed one (its earlier part is then not in `wall_s`, and the report leaves it out of the
    cost). A run that had finished before (rerun to export) keeps its first record."""
    earlier = job.marker() if job.finished_here() else None
    timing = earlier or {"wall_s": wall_s, "resumed": job.resumed}
    payload = {"arm": job.arm, "seed": job.seed, "overrides": job.overrides,
               "wall_s": timing["wall_s"], "resumed": timing.get("resumed", False)}  # fmt: skip
    (job.run_dir / MARKER).write_text(json.dumps(payload, indent=1) + "\n")
