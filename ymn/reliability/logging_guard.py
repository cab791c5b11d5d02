"""Logging faults never stop training: a logger whose writes fail is warned about once and then
muted, while the others (the CSV logger in the run directory) keep recording."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

GUARDED = (
    "log_metrics",
    "log_hyperparams",
    "log_graph",
    "save",
    "finalize",
    "after_save_checkpoint",
)


def guard_logger(logger: Any) -> Any:
    """Wrap the write methods of `logger` (in place; `isinstance` checks still hold)."""
    state = {"failed": False}
    for name in GUARDED:
        method = getattr(logger, name, None)
        if callable(method):
            setattr(logger, name, _guarded(logger, name, method, state))
    return logger


def _guarded(logger: Any, name: str, method: Callable, state: dict[str, bool]) -> Callable:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if state["failed"]:
            return None
        try:
            return method(*args, **kwargs)
        except Exception as error:  # a logging backend must never end a run
            state["failed"] = True
            log.warning(
                "Logger %s failed in %s (%s: %s); it is muted, training goes on and the other "
                "loggers keep recording.",
                type(logger).__name__,
                name,
                type(error).__name__,
                error,
            )
            return None

    return call
