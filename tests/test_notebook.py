"""notebooks/compare_phases.ipynb executed headless on demo-shaped runs (two chained smoke runs).

Phase 1 logs to wandb (offline) and CSV, phase 2 (init_from phase 1) to CSV only, so both ways
of reading a run are exercised. Slow: two training runs on CPU.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import run_training, smoke_command
from ymn.analysis import runs as analysis
from ymn.analysis.wandb_files import load_offline_run, offline_run_dirs

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "compare_phases.ipynb"
FIGURES = ["loss", "probe_count", "probe_facegrid", "probe_attn", "probe_linear", "samples"]
FIGURES += ["confusions"]


def base_model(folder: Path) -> list[str]:
    """The embedded tiny base, or a random tiny model when the asset is not there."""
    from ymn.model.components import TINY_BASE_DIR

    if (TINY_BASE_DIR / "model_index.json").is_file():
        return []
    from ymn.model.components import build_tiny
    from ymn.model.export import save_diffusers

    save_diffusers(build_tiny(0), folder)
    return [f"model.components.pretrained={folder}"]


def smoke(run_dir: Path, data_dir: Path, extra: list[str]) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    run_training(smoke_command(run_dir, data_dir, *extra), env=env)


@pytest.fixture(scope="module")
def runs_root(module_tmp) -> Path:
    tmp = module_tmp.mktemp("phases")
    model = base_model(tmp / "base")
    root = tmp / "runs"
    smoke(root / "phase1", tmp / "data", model)  # default loggers: wandb offline + CSV
    smoke(root / "phase2", tmp / "data", [*model, f"init_from={root / 'phase1'}", "logger=csv"])
    return root


def kernel_dir(folder: Path) -> Path:
    """A `python3` kernel spec that starts this interpreter (the venv), whatever PATH says."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "ymn", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return folder


def test_notebook_runs_headless_and_saves_figures(runs_root, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    figures = tmp_path / "figures"
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir(tmp_path / "jupyter")))
    monkeypatch.setenv("YMN_RUNS_ROOT", str(runs_root))
    monkeypatch.setenv("YMN_FIG_DIR", str(figures))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("YMN_WANDB_PROJECT", raising=False)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()

    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "phase1" in text and "phase2" in text
    for name in FIGURES:
        path = figures / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 1000, name


def test_analysis_reads_both_phases(runs_root):
    runs = analysis.load_runs(runs_root)
    assert [run.label for run in runs] == ["phase1", "phase2"]
    for run in runs:
        steps, values = analysis.metric_series(run, "train/loss")
        assert steps.tolist() == [0, 1] and (values > 0).all()
        assert len(analysis.metric_series(run, "val/loss")[0]) == 1  # one check, at step 2
        for key in ("probe/count/exact_acc", "probe/facegrid/cell_acc", "probe/attn/count_entropy"):
            assert analysis.metric_series(run, key)[0].tolist() == [0, 2], (run.label, key)
        assert analysis.family_keys([run], "linear"), run.label
        assert [step for step, _ in analysis.sample_grids(run)] == [0, 2]
        assert sorted(run.confusions) == [0, 2]
    assert runs[1].config["init_from"] == str(runs_root / "phase1")


def test_offline_wandb_log_matches_the_csv(runs_root):
    (offline,) = offline_run_dirs(runs_root / "phase1")
    logged = load_offline_run(offline)
    if not logged["scalars"]:
        pytest.skip("wandb is not installed: its protobuf records cannot be read")
    csv_run = analysis.load_run(runs_root / "phase1", wandb=False)
    for key in ("train/loss", "probe/count/mae"):
        assert logged["scalars"][key] == pytest.approx(csv_run.metrics[key]), key
    assert sorted(logged["images"]["samples"]) == [0, 2]
    assert all(p.is_file() for files in logged["images"]["samples"].values() for p in files)
    assert logged["config"]["name"] == "smoke"
