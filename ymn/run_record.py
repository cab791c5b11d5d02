"""What every run directory records: resolved config, git commit, packages, data manifest, and
each launch's CPU thread count (training is bit-for-bit reproducible only at a fixed one)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf


def git_state(repo: Path | None = None) -> dict[str, str | bool | None]:
    """The commit the code ran at and whether the tree had uncommitted changes."""
    cwd = repo or Path(__file__).resolve().parent.parent

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def commit_label(repo: Path | None = None) -> str:
    """HEAD as one string for JSON records: `+dirty` appended when tracked files differ,
    "unknown" outside git."""
    state = git_state(repo)
    if state["commit"] is None:
        return "unknown"
    return f"{state['commit']}{'+dirty' if state['dirty'] else ''}"


def installed_packages() -> list[str]:
    """`pip freeze`-style lines, read from package metadata (no subprocess)."""
    lines = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()}
    return sorted(lines, key=str.lower)


def launch_record() -> dict[str, object]:
    """What a launch ran with that the config does not say: threads change float reduction
    order, so a rerun matches bit for bit only at the same `torch_threads`."""
    return {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def record_run(run_dir: Path, cfg: DictConfig, manifest: Path | None = None) -> None:
    """Write config_resolved.yaml, git.json, requirements.txt (and data_manifest.json if given),
    and add this launch to launches.jsonl (a resumed run keeps the earlier launches' lines)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "launches.jsonl").open("a", encoding="utf-8") as launches:
        launches.write(json.dumps(launch_record()) + "\n")
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "git.json").write_text(json.dumps(git_state(), indent=2) + "\n")
    (run_dir / "requirements.txt").write_text("\n".join(installed_packages()) + "\n")
    if manifest is not None and manifest.is_file():
        shutil.copyfile(manifest, run_dir / "data_manifest.json")


class RecordDataManifest(Callback):
    """Copies the data manifest into the run dir once `prepare_data` has made it, with the
    data module's setup checks (`preflight`: ED1 drops, caption lengths, shard problems) added
    under `"preflight"` and logged once as `data/*` metrics."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        manifest = getattr(datamodule, "manifest_path", None)
        if not trainer.is_global_zero or manifest is None or not Path(manifest).is_file():
            return
        report = getattr(datamodule, "preflight", None)
        if report is None:
            shutil.copyfile(manifest, self.run_dir / "data_manifest.json")
            return
        data = json.loads(Path(manifest).read_text(encoding="utf-8"))
        data["preflight"] = report.as_dict()
        text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (self.run_dir / "data_manifest.json").write_text(text, encoding="utf-8")
        for logger in trainer.loggers:
            logger.log_metrics(report.metrics(), step=trainer.global_step)
