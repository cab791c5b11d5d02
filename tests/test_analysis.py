"""ymn.analysis: run directories and offline wandb logs read back, and the comparison plots."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from ymn.analysis import runs as analysis
from ymn.analysis import wandb_files

matplotlib.use("Agg")


# ----------------------------------------------------------------------------- fixtures


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Lightning CSVLogger style: one header of every key, empty cells where a row lacks one."""
    keys = sorted({k for row in rows for k in row})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def make_run(folder: Path, train_steps: int, probe_steps: list[int], shift: float) -> Path:
    """A run dir with CSV train/val loss, probe JSONs (one metric only there), samples."""
    rows = [{"step": s, "train/loss": shift + 1.0 / (s + 1)} for s in range(train_steps)]
    rows.append({"step": train_steps - 1, "val/loss": shift + 0.5})
    rows += [{"step": s, "probe/count/mae": shift + s} for s in probe_steps]
    write_csv(folder / "csv" / "metrics.csv", rows)
    (folder / "probes").mkdir(parents=True)
    (folder / "samples").mkdir()
    for s in probe_steps:
        metrics = {"probe/count/mae": -1.0, "probe/facegrid/cell_acc": shift + s / 10}
        report = {"step": s, "metrics": metrics | {"probe/count/slope": None}}
        (folder / "probes" / f"step_{s:06d}.json").write_text(json.dumps(report))
        Image.new("RGB", (40, 30), "red").save(folder / "probes" / f"confusion_step_{s:06d}.png")
        Image.new("RGB", (60, 20), "blue").save(folder / "samples" / f"step_{s:06d}.png")
    (folder / "config_resolved.yaml").write_text(f"name: {folder.name}\nseed: 1\n")
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_run(tmp_path / "demo" / "phase1", train_steps=6, probe_steps=[0, 3, 6], shift=0.0)
    make_run(tmp_path / "demo" / "phase2", train_steps=4, probe_steps=[0, 4], shift=10.0)
    (tmp_path / "demo" / "notes").mkdir()  # not a run
    (tmp_path / "demo" / "phase1" / "wandb").mkdir()  # inside a run: never searched
    return tmp_path / "demo"


# ----------------------------------------------------------------------------- run dirs


def test_find_runs_lists_run_dirs_only(root: Path) -> None:
    assert analysis.find_runs(root) == [root / "phase1", root / "phase2"]
    assert analysis.find_runs(root / "phase2") == [root / "phase2"]
    with pytest.raises(FileNotFoundError, match="YMN_RUNS_ROOT"):
        analysis.find_runs(root / "missing")


def test_load_run_merges_csv_and_probe_json(root: Path) -> None:
    run = analysis.load_run(root / "phase1")
    assert run.label == "phase1" and run.config["name"] == "phase1"
    steps, values = analysis.metric_series(run, "train/loss")
    assert steps.tolist() == list(range(6))
    np.testing.assert_allclose(values, [1.0 / (s + 1) for s in range(6)])
    assert analysis.metric_series(run, "val/loss")[0].tolist() == [5]
    # the CSV wins where both have a point; the JSON adds what the CSV lacks; None is skipped
    assert analysis.metric_series(run, "probe/count/mae")[1].tolist() == [0.0, 3.0, 6.0]
    assert analysis.metric_series(run, "probe/facegrid/cell_acc")[0].tolist() == [0, 3, 6]
    assert "probe/count/slope" not in run.metrics
    assert [s for s, _ in analysis.sample_grids(run)] == [0, 3, 6]
    assert sorted(run.confusions) == [0, 3, 6]


def test_metric_series_names_run_and_key(root: Path) -> None:
    run = analysis.load_run(root / "phase2")
    with pytest.raises(KeyError, match="phase2.*probe/attn/x"):
        analysis.metric_series(run, "probe/attn/x")


def test_queries_over_runs(root: Path) -> None:
    runs = analysis.load_runs(root)
    assert [r.label for r in runs] == ["phase1", "phase2"]
    assert analysis.family_keys(runs, "facegrid") == ["probe/facegrid/cell_acc"]
    assert analysis.family_keys(runs, "count") == ["probe/count/mae"]
    assert analysis.metric_keys(runs, "val/") == ["val/loss"]
    table = analysis.last_values(runs, ["val/loss", "probe/count/mae", "nope"])
    assert table == [["phase1", 0.5, 6.0, None], ["phase2", 10.5, 14.0, None]]
    assert analysis.step_offsets(runs, chain=True) == [0, 6]
    assert analysis.step_offsets(runs, chain=False) == [0, 0]
    with pytest.raises(KeyError, match="family"):
        analysis.family_keys(runs, "colour")


def test_plots_draw_one_line_per_run_with_the_metric(root: Path) -> None:
    runs = analysis.load_runs(root)
    ax = analysis.plot_metric(runs, "probe/count/mae", chain=True)
    assert [line.get_label() for line in ax.lines] == ["phase1", "phase2"]
    assert ax.lines[1].get_xdata().tolist() == [6, 10]  # phase 2 drawn after phase 1
    empty = analysis.plot_metric(runs, "probe/none")
    assert not empty.lines and empty.texts[0].get_text() == "no data"
    fig = analysis.plot_metrics(runs, ["train/loss", "val/loss"], columns=3)
    assert sum(ax.get_visible() for ax in fig.axes) == 2


def test_plot_images_rows_per_run_and_missing_cells(root: Path) -> None:
    runs = analysis.load_runs(root)
    runs[1].samples = {}
    fig = analysis.plot_images(runs, "samples", ("first", "last", 3))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["phase1 — step 0", "phase1 — step 6", "phase1 — step 3"]
    assert titles[3].startswith("phase2: no samples")
    assert fig.axes[0].images[0].get_array().shape == (20, 60, 3)
    with pytest.raises(ValueError, match="kind"):
        analysis.plot_images(runs, "grids")


def test_resolve_root_falls_back_to_the_repository(tmp_path: Path) -> None:
    assert analysis.resolve_root(tmp_path) == tmp_path
    resolved = analysis.resolve_root("runs/demo-not-here")
    assert resolved.is_absolute() and (resolved.parents[1] / "pyproject.toml").is_file()


def test_online_loading_is_skipped_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert analysis.load_wandb_online("someone/ymn") == []


# ----------------------------------------------------------------------------- wandb log


def frame(payloads: list[bytes]) -> bytes:
    """Write payloads in the leveldb log framing wandb uses (blocks of 32 KiB)."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        first = True
        while True:
            left = wandb_files.BLOCK_LEN - len(out) % wandb_files.BLOCK_LEN
            if left < wandb_files.HEADER_LEN:
                out += b"\0" * left
                continue
            chunk, payload = payload[: left - 7], payload[left - 7 :]
            kind = (1 if not payload else 2) if first else (4 if not payload else 3)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + chunk), len(chunk), kind)
            out += chunk
            first = False
            if not payload:
                break
    return bytes(out)


def test_read_records_joins_records_across_blocks(tmp_path: Path) -> None:
    payloads = [b"a" * 10, b"b" * 70_000, b""]  # FULL, FIRST+MIDDLE+LAST, empty FULL
    used = len(frame(payloads)) % wandb_files.BLOCK_LEN
    payloads.append(b"c" * (wandb_files.BLOCK_LEN - used - 7 - 3))  # leaves a 3-byte tail
    payloads.append(b"d" * 5)  # so this one starts in the next block
    path = tmp_path / "run-x.wandb"
    path.write_bytes(frame(payloads))
    assert list(wandb_files.read_records(path)) == payloads
    path.write_bytes(frame(payloads)[:-3])  # a run still writing: the last record is cut
    assert list(wandb_files.read_records(path)) == payloads[:-1]
    (tmp_path / "bad.wandb").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.wandb"):
        list(wandb_files.read_records(tmp_path / "bad.wandb"))


def history(pb, items: dict[tuple[str, ...], object]) -> bytes:
    record = pb.Record()
    for nested, value in items.items():
        item = record.history.item.add()
        item.nested_key.extend(nested)
        item.value_json = json.dumps(value)
    return record.SerializeToString()


def test_offline_run_scalars_images_and_config(tmp_path: Path) -> None:
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    offline = tmp_path / "wandb" / "offline-run-20250101_000000-abc"
    offline.mkdir(parents=True)
    config = pb.Record()
    item = config.config.update.add()
    item.key, item.value_json = "name", json.dumps("phase1")
    records = [
        config.SerializeToString(),
        history(pb, {("train/loss",): 0.5, ("trainer/global_step",): 0, ("_step",): 0}),
        history(pb, {("train/loss",): 0.25, ("trainer/global_step",): 1, ("_step",): 1}),
        history(
            pb,
            {
                ("samples", "_type"): "images/separated",
                ("samples", "width"): 64,
                ("samples", "filenames"): ["media/images/a.png", "media/images/b.png"],
                ("trainer/global_step",): 1,
                ("_step",): 2,
            },
        ),
        history(pb, {("probe/count/mae",): 1.5, ("_step",): 3}),  # no Lightning step: _step
    ]
    (offline / "run-abc.wandb").write_bytes(frame(records))
    assert wandb_files.offline_run_dirs(tmp_path) == [offline]
    data = wandb_files.load_offline_run(offline)
    assert data["config"] == {"name": "phase1"}
    assert data["scalars"] == {"train/loss": {0: 0.5, 1: 0.25}, "probe/count/mae": {3: 1.5}}
    files = offline / "files" / "media" / "images"
    assert data["images"] == {"samples": {1: [files / "a.png", files / "b.png"]}}
    # a run dir with only the wandb log still loads, with its samples as the images to show
    run = analysis.load_run(tmp_path)
    assert analysis.metric_series(run, "train/loss")[1].tolist() == [0.5, 0.25]
    assert run.config == {"name": "phase1"} and not run.samples
