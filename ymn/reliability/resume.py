"""`ckpt_path=last|RUN_DIR|FILE`: which checkpoint a resume loads, and whether it may.

Lightning checkpoints are pickles. Ours (inside a ymn run directory) are trusted; any other
file needs `allow_pickle_ckpt=true`. Every checkpoint is loaded with `weights_only=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ymn.run_dir import latest_checkpoint, latest_in

log = logging.getLogger(__name__)

RUN_MARKERS = (".hydra", "config_resolved.yaml")


class UnsafeCheckpointError(PermissionError):
    """A checkpoint from outside a ymn run directory, without `allow_pickle_ckpt=true`."""


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
        found = latest_checkpoint(run_dir)
        if found is None:
            log.warning("ckpt_path=last: no checkpoint in %s/checkpoints; starting fresh", run_dir)
            return None
        return str(found)
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        found = latest_checkpoint(path) or latest_in(path)
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
