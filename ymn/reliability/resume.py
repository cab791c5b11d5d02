"""`ckpt_path=last|RUN_DIR|FILE`: which checkpoint a resume loads, and whether it may.

Lightning checkpoints are pickles. Ours (inside a ymn run directory) are trusted; any other
file needs `allow_pickle_ckpt=true`. Every checkpoint is loaded with `weights_only=True`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

RUN_MARKERS = (".hydra", "config_resolved.yaml")


class UnsafeCheckpointError(PermissionError):
    """A checkpoint from outside a ymn run directory, without `allow_pickle_ckpt=true`."""


def newest_checkpoint(folder: Path) -> Path | None:
    """`last.ckpt` if it resolves to a file, else the highest `step*.ckpt`, else None."""
    last = folder / "last.ckpt"
    if last.is_file():
        return last
    steps = [p for p in folder.glob("step*.ckpt") if re.fullmatch(r"step\d+\.ckpt", p.name)]
    return max(steps, key=lambda p: int(p.stem[4:])) if steps else None


def is_run_checkpoint(path: Path) -> bool:
    """True for `RUN/checkpoints/*.ckpt` where RUN is a ymn run directory."""
    path = Path(path).resolve()
    run = path.parent.parent
    return path.parent.name == "checkpoints" and any((run / m).exists() for m in RUN_MARKERS)


def resolve_ckpt_path(
    ckpt_path: str | None, run_dir: str | Path, allow_pickle: bool = False
) -> str | None:
    """The checkpoint file to resume from, or None to start fresh.

    `last`: this run's newest checkpoint (none yet: start fresh, so a requeued job can always
    pass `ckpt_path=last`). A run directory: its newest checkpoint. A file: itself.
    """
    if not ckpt_path:
        return None
    if str(ckpt_path) == "last":
        found = newest_checkpoint(Path(run_dir) / "checkpoints")
        if found is None:
            log.warning("ckpt_path=last: no checkpoint in %s/checkpoints; starting fresh", run_dir)
            return None
        return str(found)
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        found = newest_checkpoint(path / "checkpoints") or newest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(
                f"ckpt_path={ckpt_path}: no checkpoints/last.ckpt or step*.ckpt in that run "
                "directory. Pass a checkpoint file, or init_from=RUN_DIR to start from its weights."
            )
        return str(found)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no such file. Use `last`, a ymn run directory or a .ckpt file."
        )
    if not is_run_checkpoint(path) and not allow_pickle:
        raise UnsafeCheckpointError(
            f"ckpt_path={ckpt_path} is not inside a ymn run directory (RUN/checkpoints/). "
            "Checkpoints are pickles; if you trust this file, pass allow_pickle_ckpt=true "
            "(it is still loaded with torch.load(weights_only=True))."
        )
    return str(path)
