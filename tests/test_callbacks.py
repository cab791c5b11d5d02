"""SampleImages and ProbeCallback inside a 2-step Lightning fit on the tiny model (CPU)."""

from __future__ import annotations

import csv
import functools
import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from ymn.callbacks.probes import ProbeCallback
from ymn.callbacks.samples import SampleImages, image_grid
from ymn.callbacks.schedule import due
from ymn.model.components import build_tiny
from ymn.model.module import DiffusionModule
from ymn.probes.config import ProbeConfig

SIZE = 64


class CornerDetector:
    """Always finds one face, in the top-left cell."""

    def detect(self, image):
        return [(0.02, 0.02, 0.1, 0.1)]


def heldout_batch(seed: int, n: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    metas = []
    for i in range(n):
        k = 1 + (seed + i) % 3
        boxes = [[0.1 + 0.3 * j, 0.4, 0.2 + 0.3 * j, 0.5] for j in range(k)]
        metas.append({"n_people": k, "facepos": boxes, "characters": ["SaitoMio"] * k})
    return {
        "pixel_values": torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1,
        "captions": ["x"] * n,
        "meta": metas,
    }


class TinyData(L.LightningDataModule):
    def train_dataloader(self):
        batches = [
            {"pixel_values": torch.zeros(2, 3, SIZE, SIZE), "captions": ["1person", " "]}
        ] * 4
        return DataLoader(batches, batch_size=None)

    def val_dataloader(self):
        return DataLoader([heldout_batch(0), heldout_batch(1), heldout_batch(2)], batch_size=None)


def tiny_module() -> DiffusionModule:
    return DiffusionModule(build_tiny(0), optimizer=functools.partial(torch.optim.AdamW, lr=1e-5))


def both_callbacks() -> list[L.Callback]:
    samples = SampleImages(
        every_n_steps=1,
        prompts=["2people, fhml fvmd fhmr fvmd"],
        seeds=[0, 3],
        size=[SIZE, SIZE],
        steps=2,
    )
    probes = ProbeCallback(
        ProbeConfig(
            every_n_steps=2,
            detector=CornerDetector(),
            counts=[1, 2],
            layouts=["row"],
            seeds=[0],
            heldout_batches=2,
            size=[SIZE, SIZE],
            steps=2,
            timesteps=[500],
            folds=2,
            n_permutations=50,
        )
    )
    return [samples, probes]


def two_step_trainer(run_dir) -> L.Trainer:
    return L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=CSVLogger(run_dir, name="csv", version=""),
        callbacks=both_callbacks(),
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=run_dir,
        enable_model_summary=False,
    )


@pytest.fixture(scope="module")
def fitted(module_tmp):
    """Fit 2 steps with both callbacks and a CSV logger; return (run dir, trainer)."""
    run_dir = module_tmp.mktemp("run")
    trainer = two_step_trainer(run_dir)
    trainer.fit(tiny_module(), datamodule=TinyData())
    return run_dir, trainer


def test_sample_grids_written_per_step(fitted) -> None:
    run_dir, _ = fitted
    names = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert names == ["step_000000.png", "step_000001.png", "step_000002.png"]  # start, 1, 2=end
    from PIL import Image

    assert Image.open(run_dir / "samples" / "step_000002.png").size == (SIZE, 2 * SIZE)
    lines = (run_dir / "samples" / "step_000000.txt").read_text().splitlines()
    assert lines == ["0\t0\t2people, fhml fvmd fhmr fvmd", "1\t3\t2people, fhml fvmd fhmr fvmd"]


def test_probe_reports_and_logged_metrics(fitted) -> None:
    run_dir, trainer = fitted
    reports = sorted((run_dir / "probes").glob("step_*.json"))
    assert [p.name for p in reports] == ["step_000000.json", "step_000002.json"]
    assert (run_dir / "probes" / "confusion_step_000002.png").stat().st_size > 0
    report = json.loads(reports[-1].read_text())
    assert report["step"] == 2
    assert [r["detected_count"] for r in report["records"]] == [1, 1]
    metrics = report["metrics"]
    assert metrics["probe/count/exact_acc"] == 0.5  # requested 1 and 2, detected 1 and 1
    assert metrics["probe/count/signed_bias"] == -0.5
    assert metrics["probe/facegrid/cell_acc"] == 0.0  # targets are in the middle row
    assert 0.0 <= metrics["probe/attn/grid_mass_in_target"] <= 1.0
    assert "probe/attn/sample/count_entropy" in metrics
    assert "probe/linear/count_acc/mid/t500" in metrics
    assert len(report["heldout_attention"]) == 8
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("probe/count/exact_acc")]
    assert sorted(int(r["step"]) for r in logged) == [0, 2]
    assert float(trainer.callback_metrics["probe/count/exact_acc"]) == 0.5


def test_a_run_resumed_at_its_end_writes_the_end_pass_it_was_killed_in(fitted, tmp_path) -> None:
    """Resumed from its final checkpoint, a fit skips the training loop (and on_train_end):
    the missing end passes are written, equal to the uninterrupted run's; a rerun keeps them."""
    run_dir, trainer = fitted
    trainer.save_checkpoint(tmp_path / "end.ckpt")  # as a run killed during its end passes
    resumed = tmp_path / "resumed"
    two_step_trainer(resumed).fit(tiny_module(), TinyData(), ckpt_path=tmp_path / "end.ckpt")
    assert [p.name for p in (resumed / "probes").glob("step_*.json")] == ["step_000002.json"]
    end = json.loads((resumed / "probes" / "step_000002.json").read_text())
    uninterrupted = json.loads((run_dir / "probes" / "step_000002.json").read_text())
    assert end["records"] == uninterrupted["records"]

    def measured(report: dict) -> dict:
        return {k: v for k, v in report["metrics"].items() if not k.startswith("probe/time/")}

    assert measured(end) == measured(uninterrupted)
    grid = (resumed / "samples" / "step_000002.png").read_bytes()
    assert grid == (run_dir / "samples" / "step_000002.png").read_bytes()

    written = (resumed / "probes" / "step_000002.json").stat().st_mtime_ns
    two_step_trainer(resumed).fit(tiny_module(), TinyData(), ckpt_path=tmp_path / "end.ckpt")
    assert (resumed / "probes" / "step_000002.json").stat().st_mtime_ns == written


def test_schedule_and_grid_helpers() -> None:
    assert [s for s in range(7) if due(s, 3)] == [3, 6]
    assert not any(due(s, 0) for s in range(5))
    from PIL import Image

    grid = image_grid([Image.new("RGB", (4, 6))] * 5, columns=2)
    assert grid.size == (8, 18)


def test_sample_entries_batch_by_sampler_settings() -> None:
    samples = SampleImages(prompts=["a", "b", "c"], seeds=[0], batch_size=2)
    assert [[e["prompt"] for e in b] for b in samples._batches()] == [["a", "b"], ["c"]]
    samples.entries[1]["cfg"] = 7.0  # a prompt file's own cfg: its own pipeline call
    assert [[e["prompt"] for e in b] for b in samples._batches()] == [["a"], ["b"], ["c"]]


def test_unknown_probe_setting_is_named() -> None:
    with pytest.raises(TypeError, match="unknown probe setting"):
        ProbeCallback({"detector": CornerDetector(), "not_a_setting": 1})


def test_probes_sample_the_ema_weights_when_asked_and_restore_the_trained_ones(
    monkeypatch, tmp_path
) -> None:
    module = DiffusionModule(
        build_tiny(0), optimizer=functools.partial(torch.optim.AdamW, lr=1e-5), ema_decay=0.5
    )
    first = next(module.unet.parameters())
    with torch.no_grad():
        first.add_(1.0)  # the trained weights move; the EMA keeps the initial ones
    trained, averaged = first.detach().clone(), module.ema.shadow_params[0].clone()
    seen: list[torch.Tensor] = []

    def fake_pass(pl_module, **kwargs):
        seen.append(next(pl_module.unet.parameters()).detach().clone())
        return {}

    monkeypatch.setattr("ymn.callbacks.probes.run_probe_pass", fake_pass)
    trainer = SimpleNamespace(
        callback_metrics={}, loggers=[], default_root_dir=tmp_path, datamodule=None
    )
    for ema in (True, False):
        callback = ProbeCallback(ProbeConfig(ema=ema, heldout_batches=0))
        callback.setup(trainer, module, "fit")
        callback.run(trainer, module, step=1)
    assert torch.equal(seen[0], averaged) and not torch.equal(averaged, trained)
    assert torch.equal(seen[1], trained)
    assert torch.equal(next(module.unet.parameters()), trained)


def test_ema_probes_without_an_ema_are_refused_before_training() -> None:
    callback = ProbeCallback(ProbeConfig(ema=True))
    with pytest.raises(ValueError, match="model.ema_decay"):
        callback.setup(SimpleNamespace(), tiny_module(), "fit")


def test_the_ema_takes_one_foreach_update_when_asked_and_matches_the_loop() -> None:
    averages = []
    for foreach in (False, True):
        module = DiffusionModule(
            build_tiny(0),
            optimizer=functools.partial(torch.optim.AdamW, lr=1e-5),
            ema_decay=0.5,
            ema_foreach=foreach,
        )
        assert module.ema.foreach is foreach
        with torch.no_grad():
            for parameter in module.unet.parameters():
                parameter.add_(1.0)
        module.ema.step(module.unet.parameters())
        averages.append(module.ema.shadow_params)
    moved = [a - b for a, b in zip(averages[1], averages[0], strict=True)]
    assert max(float(d.abs().max()) for d in moved) < 1e-5
    initial = next(build_tiny(0).unet.parameters())
    assert not torch.allclose(averages[1][0], initial)  # the average moved towards the weights
