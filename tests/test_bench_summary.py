"""SUMMARY.md lists every benchmark recorded in its folder, not only the ones just run."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.bench.common import NO_GPU
from experiments.bench.run_all import summary


def _record(out: Path, name: str, commit: str, ratio: dict[str, float]) -> None:
    machine = {
        "cpu": "test cpu", "cores": 2, "torch_threads": 1, "gpu": NO_GPU, "python": "3.11",
        "torch": "2", "lightning": "2", "diffusers": "0", "git_commit": commit,
    }  # fmt: skip
    payload = {"machine": machine, "ratio": ratio, "target": "t", "met": True}
    (out / f"{name}.json").write_text(json.dumps(payload))


def test_summary_keeps_rows_of_benchmarks_not_rerun(tmp_path: Path) -> None:
    _record(tmp_path, "train_step", "a" * 40, {"lightning_module / bare_pytorch": 1.02})
    _record(tmp_path, "data_stream", "b" * 40 + "+dirty", {"workers=0": 0.94, "workers=1": 0.9})
    text = summary(tmp_path, failures={"probes": "RuntimeError: boom"})
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    names = [row.split("|")[1].strip() for row in rows if row.split("|")[1].strip()]
    assert names == ["train_step", "data_stream", "probes"]  # BENCHMARKS order
    assert "| aaaaaaa |" in text and "| bbbbbbb+dirty |" in text
    assert "RuntimeError: boom" in text
    assert "latent_cache" not in text  # never recorded, never run: no row
