"""Stage 2's moving average of its weights (`tiny_base --ema-decay`): the rule, the
checkpoint, the resume, what the base saves and what a reading loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import train_tiny_base
from ymn.model.components import build_tiny, load_components
from ymn.model.stage_training import ParameterAverage, StageCheckpoint
from ymn.model.tiny_base import load_stage2_weights

FLAGS = ["--images", "4", "--vae-steps", "1", "--vae-batch", "2", "--decoder-steps", "0"]
FLAGS += ["--colour-steps", "0", "--text-steps", "0", "--unet-steps", "4", "--batch", "2"]
FLAGS += ["--save-every", "2", "--seed", "5"]


def test_the_average_follows_the_warmed_up_decay_rule():
    weight = torch.nn.Parameter(torch.zeros(3))
    average = ParameterAverage([("m.w", weight)], decay=0.5)
    expected = None
    for n, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        weight.data.fill_(value)
        average.update()
        # diffusers' EMAModel: no average before the second update, then min(decay, (1+k)/(10+k))
        k = n - 1
        decay = 0.0 if k <= 0 else min(0.5, (1 + k) / (10 + k))
        expected = value if expected is None else decay * expected + (1 - decay) * value
    assert average.updates == 4
    averaged = average.tensors()["average.m.w"]
    assert torch.allclose(averaged, torch.full((3,), expected))
    assert not torch.allclose(averaged, weight.data)  # the average, not the last value
    average.copy_to_parameters()
    assert torch.allclose(weight.data, torch.full((3,), expected))


def test_a_bad_decay_is_refused_before_any_training(tmp_path):
    with pytest.raises(ValueError, match="decay"):
        ParameterAverage([("m.w", torch.nn.Parameter(torch.zeros(1)))], decay=1.0)
    work = tmp_path / "work"
    with pytest.raises(ValueError, match="--ema-decay"):
        train_tiny_base([*FLAGS, "--ema-decay", "1.5", "--work", str(work), "--out", str(work)])
    assert not work.exists()  # nothing trained, nothing written


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[Path, Path]:
    out, work = tmp_path / name, tmp_path / f"{name}-work"
    assert train_tiny_base([*FLAGS, *extra, "--out", str(out), "--work", str(work)]) == 0
    return out, work


def test_the_base_saves_the_average_and_the_checkpoint_keeps_both(tmp_path):
    out, work = _run(tmp_path, "ema", "--ema-decay", "0.9")
    tensors = load_file(work / "stage2_unet.safetensors")
    saved = load_file(out / "unet/diffusion_pytorch_model.safetensors")
    trained_apart = 0
    for key, value in saved.items():
        averaged = tensors[f"average.unet.{key}"]
        assert torch.allclose(value.float(), averaged, atol=2e-3), key  # saved: float16
        trained_apart += not torch.equal(averaged, tensors[f"module.unet.{key}"])
    assert trained_apart > 0  # the average is not the trained weights
    reading = build_tiny(0)
    assert load_stage2_weights(reading, work, average=True) == 4
    for key, value in reading.unet.state_dict().items():
        assert torch.equal(value, tensors[f"average.unet.{key}"]), key
    assert load_stage2_weights(reading, work) == 4
    for key, value in reading.unet.state_dict().items():
        assert torch.equal(value, tensors[f"module.unet.{key}"]), key


def test_without_a_decay_there_is_no_average_and_asking_for_one_fails(tmp_path):
    out, work = _run(tmp_path, "plain")
    tensors = load_file(work / "stage2_unet.safetensors")
    assert not any(key.startswith("average.") for key in tensors)
    saved = load_components("tiny", pretrained=str(out)).unet.state_dict()
    for key, value in saved.items():  # the trained weights, as the shipped base
        assert torch.allclose(value, tensors[f"module.unet.{key}"], atol=2e-3), key
    with pytest.raises(ValueError, match="keeps no average"):
        load_stage2_weights(build_tiny(0), work, average=True)


def test_a_run_killed_inside_stage_2_resumes_its_average_bit_for_bit(tmp_path, monkeypatch):
    full, _ = _run(tmp_path, "full", "--ema-decay", "0.9")
    save = StageCheckpoint.save

    def save_then_die(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        if self.record.name == "stage2_unet.json" and step == 2:
            raise KeyboardInterrupt  # as a kill right after the step-2 checkpoint

    monkeypatch.setattr(StageCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", "--ema-decay", "0.9")
    monkeypatch.setattr(StageCheckpoint, "save", save)
    resumed, _ = _run(tmp_path, "resumed", "--ema-decay", "0.9")
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(full / name), load_file(resumed / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_resuming_an_averaged_run_without_its_average_fails_clearly(tmp_path):
    _, work = _run(tmp_path, "plain")
    (work / "stage2_unet.json").write_text(
        (work / "stage2_unet.json").read_text().replace('"step": 4', '"step": 2')
    )
    resume = [*FLAGS, "--ema-decay", "0.9", "--out", str(tmp_path / "o"), "--work", str(work)]
    with pytest.raises(ValueError, match="no parameter average"):
        train_tiny_base(resume)
