"""Reading finished runs back: run directories, wandb logs, comparison plots (no training code)."""

from ymn.analysis.runs import (
    PROBE_FAMILIES,
    RunData,
    family_keys,
    find_runs,
    last_values,
    load_run,
    load_runs,
    load_wandb_online,
    metric_keys,
    metric_series,
    plot_images,
    plot_metric,
    plot_metrics,
    resolve_root,
    sample_grids,
)

__all__ = [
    "PROBE_FAMILIES",
    "RunData",
    "family_keys",
    "find_runs",
    "last_values",
    "load_run",
    "load_runs",
    "load_wandb_online",
    "metric_keys",
    "metric_series",
    "plot_images",
    "plot_metric",
    "plot_metrics",
    "resolve_root",
    "sample_grids",
]
