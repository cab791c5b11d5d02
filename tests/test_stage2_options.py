"""Stage 2's loss and what it trains (`tiny_base --snr-gamma`, `--freeze-text-encoder`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import train_tiny_base
from ymn.model.contrastive import TEXT_STAGE
from ymn.model.stage_training import module_weights

FLAGS = ["--images", "4", "--vae-steps", "1", "--vae-batch", "2", "--unet-steps", "3"]
FLAGS += ["--batch", "2", "--save-every", "3", "--seed", "5"]


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[Path, Path, dict]:
    out, work = tmp_path / name, tmp_path / f"{name}-work"
    assert train_tiny_base([*FLAGS, *extra, "--out", str(out), "--work", str(work)]) == 0
    return out, work, json.loads((out / "train_info.json").read_text())


def _stage2_text_encoder(work: Path) -> dict[str, torch.Tensor]:
    return module_weights(load_file(work / "stage2_unet.safetensors"), "text_encoder")


def test_a_frozen_text_encoder_leaves_stage_1cs_weights_and_the_unet_still_trains(tmp_path):
    text = ["--text-steps", "2", "--text-batch", "4"]
    _, frozen_work, _ = _run(tmp_path, "frozen", *text, "--freeze-text-encoder", "true")
    _, trained_work, _ = _run(tmp_path, "trained", *text)
    stage_1c = module_weights(load_file(frozen_work / f"{TEXT_STAGE}.safetensors"), "text_encoder")
    frozen, trained = _stage2_text_encoder(frozen_work), _stage2_text_encoder(trained_work)
    assert frozen.keys() == stage_1c.keys()
    assert all(torch.equal(frozen[key], stage_1c[key]) for key in stage_1c)
    assert not all(torch.equal(trained[key], stage_1c[key]) for key in stage_1c)
    both = [load_file(work / "stage2_unet.safetensors") for work in (frozen_work, trained_work)]
    unets = [module_weights(tensors, "unet") for tensors in both]
    assert not all(torch.equal(unets[0][key], unets[1][key]) for key in unets[0])
    # only the UNet's parameters have optimizer moments when the encoder is frozen
    moments = [sum(key.endswith(".exp_avg") for key in tensors) for tensors in both]
    assert moments[0] == len(unets[0]) < moments[1]


def test_min_snr_weights_stage_2s_loss(tmp_path):
    # the test flags train epsilon-prediction: weight min(snr, gamma) / snr, which gamma 0.01
    # leaves at 1 only for the noisiest timesteps (snr < 0.01) and shrinks everywhere else
    _, _, weighted = _run(tmp_path, "weighted", "--snr-gamma", "0.01")
    _, _, plain = _run(tmp_path, "plain")
    assert 0 < weighted["unet_final_loss"] < 0.25 * plain["unet_final_loss"]
    assert weighted["config"]["snr-gamma"] == "0.01"


def test_a_negative_gamma_is_refused_before_any_training(tmp_path):
    work = tmp_path / "work"
    with pytest.raises(ValueError, match="--snr-gamma"):
        train_tiny_base([*FLAGS, "--snr-gamma", "-1", "--work", str(work), "--out", str(work)])
    assert not work.exists()
