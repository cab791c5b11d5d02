"""A study's definition: `ymn/conf/study/NAME.yaml` → `StudySpec` (arms × seeds of one question).

name: count
question: Does "3people gives 3-5" reproduce?
common: [experiment=toy_phase1, probes=study]     # overrides every run shares
steps: 600                                        # trainer.max_steps of every run
seeds: [1, 2]
baseline: token_first                             # the arm every other arm is compared to
arms: {token_first: [caption=asp], token_last: [caption=count_last]}
metrics: [count/exact, count/bias]                # keys of experiments.study.readings.METRICS
full_command: ymn-train --multirun ...            # the same study on SD 1.5 (paths are examples)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ymn.paths import CONFIG_DIR, PACKAGE_DIR, shareable_path

STUDY_DIR = CONFIG_DIR / "study"


class StudySpecError(ValueError):
    """A study file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class StudySpec:
    """One study: the runs it needs and what it reports."""

    name: str
    question: str
    arms: dict[str, list[str]]
    baseline: str
    seeds: list[int]
    steps: int
    common: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    full_command: str = ""
    notes: list[str] = field(default_factory=list)
    source: str = ""
    arm_steps: dict[str, int] = field(default_factory=dict)
    arm_after: dict[str, str] = field(default_factory=dict)

    def steps_of(self, arm: str) -> int:
        return self.arm_steps.get(arm, self.steps)

    def jobs(self) -> list[tuple[str, int]]:
        """(arm, seed) of every run, seed-major so early results cover every arm."""
        return [(arm, seed) for seed in self.seeds for arm in self.arms]


def only_arms(spec: StudySpec, names: list[str]) -> StudySpec:
    """The study restricted to `names` (a study run in parts); an arm a kept arm starts from must
    be kept too (its weights are needed). The baseline may run in another part: the report
    reads every kept run."""
    unknown = [n for n in names if n not in spec.arms]
    if unknown:
        raise StudySpecError(f"{spec.source}: no arm(s) {unknown}; arms: {list(spec.arms)}")
    needed = {spec.arm_after[n] for n in names if n in spec.arm_after}
    missing = sorted(needed - set(names))
    if missing:
        raise StudySpecError(
            f"{spec.source}: --arms must keep {missing} (a kept arm starts from its weights)"
        )
    kept = [n for n in spec.arms if n in names]  # the study file's order
    return replace(
        spec,
        arms={n: spec.arms[n] for n in kept},
        arm_steps={n: s for n, s in spec.arm_steps.items() if n in kept},
        arm_after={n: a for n, a in spec.arm_after.items() if n in kept},
    )


def study_path(name_or_path: str) -> Path:
    """`count` → ymn/conf/study/count.yaml; a path to a .yaml file is taken as is."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"}:
        return path
    return STUDY_DIR / f"{name_or_path}.yaml"


def available_studies() -> list[str]:
    """The study names shipped in ymn/conf/study."""
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def load_study(name_or_path: str) -> StudySpec:
    """Read and validate a study file; StudySpecError names what is wrong."""
    from experiments.study.readings import METRICS

    path = study_path(name_or_path)
    if not path.is_file():
        known = ", ".join(available_studies())
        raise StudySpecError(f"no study file {path}; known studies: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("name", "arms", "baseline", "seeds", "steps") if k not in raw]
    if missing:
        raise StudySpecError(f"{path}: missing key(s) {', '.join(missing)}")
    arms, arm_steps, arm_after = _parse_arms(path, raw["arms"])
    if raw["baseline"] not in arms:
        raise StudySpecError(f"{path}: baseline {raw['baseline']!r} is not one of {list(arms)}")
    unknown = [m for m in raw.get("metrics", []) if m not in METRICS]
    if unknown:
        raise StudySpecError(f"{path}: unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    if int(raw["steps"]) < 1 or not raw["seeds"]:
        raise StudySpecError(f"{path}: steps must be ≥ 1 and seeds non-empty")
    return StudySpec(
        name=str(raw["name"]),
        question=str(raw.get("question", "")).strip(),
        arms=arms,
        baseline=str(raw["baseline"]),
        seeds=[int(s) for s in raw["seeds"]],
        steps=int(raw["steps"]),
        common=[str(o) for o in raw.get("common", [])],
        metrics=list(raw.get("metrics") or METRICS),
        full_command=str(raw.get("full_command", "")).strip(),
        notes=[str(n) for n in raw.get("notes", [])],
        source=shareable_path(path, root=PACKAGE_DIR.parent),
        arm_steps=arm_steps,
        arm_after=arm_after,
    )


def _parse_arms(
    path: Path, raw: dict
) -> tuple[dict[str, list[str]], dict[str, int], dict[str, str]]:
    arms, steps, after = {}, {}, {}
    for name, value in raw.items():
        name = str(name)
        if isinstance(value, dict):
            arms[name] = [str(o) for o in value.get("overrides") or []]
            if "steps" in value:
                steps[name] = int(value["steps"])
            if "after" in value:
                after[name] = str(value["after"])
        else:
            arms[name] = [str(o) for o in (value or [])]
    for name, first in after.items():
        if first not in arms or first == name or first in after:
            raise StudySpecError(
                f"{path}: arm {name!r} runs after {first!r}, which must be another arm that "
                "does not itself run after one"
            )
    return arms, steps, after
