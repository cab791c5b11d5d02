"""One answer to "which checkpoint, which export" of a ymn run directory.

A run directory holds `checkpoints/` (`last.ckpt`, `step<N>.ckpt`, `best.ckpt`; a step is
stored once, the names being links) and `export/` (`diffusers/`, `model.safetensors`). The
checkpoint to resume from, to export or to carry an optimizer from is always the same one:
`last.ckpt` when it resolves to a file, else the highest `step<N>.ckpt`. Never `best.ckpt`
(best by val/loss, maybe weights only) nor any other name (a NaN dump, a copy), and never by
modification time.
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS = "checkpoints"
EXPORT = "export"
STEP_NAME = re.compile(r"step(\d+)\.ckpt")


def checkpoint_folder(run_dir: str | Path) -> Path:
    return Path(run_dir).expanduser() / CHECKPOINTS


def latest_in(folder: str | Path) -> Path | None:
    """The resumable checkpoint of a checkpoint folder: last.ckpt, else the highest step."""
    folder = Path(folder)
    last = folder / "last.ckpt"
    if last.is_file():
        return last
    steps = [
        (int(m.group(1)), p)
        for p in folder.glob("step*.ckpt")
        if (m := STEP_NAME.fullmatch(p.name))
    ]
    return max(steps)[1] if steps else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The resumable checkpoint of a run directory (see the module docstring), or None."""
    return latest_in(checkpoint_folder(run_dir))


def probe_paths(run_dir: str | Path, step: int) -> tuple[Path, Path]:
    """(JSON, confusion PNG) written by the probe pass at `step`."""
    folder = Path(run_dir).expanduser() / "probes"
    return folder / f"step_{step:06d}.json", folder / f"confusion_step_{step:06d}.png"


def probe_pass_files(run_dir: str | Path) -> list[Path]:
    """Every probe-pass JSON a run wrote (`probe_paths`' names), in step order."""
    return sorted((Path(run_dir).expanduser() / "probes").glob("step_[0-9]*.json"))


def diffusers_export(run_dir: str | Path) -> Path | None:
    """`RUN/export/diffusers` when the run exported a diffusers folder, else None."""
    folder = Path(run_dir).expanduser() / EXPORT / "diffusers"
    return folder if (folder / "model_index.json").is_file() else None
