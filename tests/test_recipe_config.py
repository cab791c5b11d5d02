"""`ymn-train experiment=phase1_640|phase2_704 --cfg job` prints exactly the recipe's values."""

import sys

import pytest
import yaml

from tests.conftest import run_training


def printed_config(*overrides: str) -> dict:
    out = run_training([sys.executable, "-m", "ymn.train", *overrides, "--cfg", "job"])
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def phase1() -> dict:
    return printed_config("experiment=phase1_640")


@pytest.fixture(scope="module")
def phase2() -> dict:
    return printed_config("experiment=phase2_704", "init_from=/runs/phase1")


def recipe_values(cfg: dict) -> dict:
    model, data, trainer = cfg["model"], cfg["data"], cfg["trainer"]
    return {
        "batch": data["batch_size"],
        "optimizer": model["optimizer"]["_target_"],
        "lr": model["optimizer"]["lr"],
        "weight_decay": model["optimizer"]["weight_decay"],
        "lr_scheduler": model["lr_scheduler"],
        "train_text_encoder": model["train_text_encoder"],
        "gradient_checkpointing": model["gradient_checkpointing"],
        "ema": model["ema_decay"],
        "caption_dropout": cfg["caption"]["dropout"],
        "crop": data["crop"],
        "multiply_mode": data["multiply_mode"],
        "precision": trainer["precision"],
        "model": model["components"]["name"],
    }


COMMON = {
    "batch": 8,
    "optimizer": "torch.optim.AdamW",
    "lr": 1e-6,
    "weight_decay": 0.01,
    "lr_scheduler": None,
    "train_text_encoder": True,
    "gradient_checkpointing": True,
    "ema": None,
    "caption_dropout": 0.15,
    "crop": "ed1",
    "multiply_mode": "ed1",
    "precision": "32-true",
    "model": "sd15",
}


def test_phase1_holds_the_recipe(phase1):
    assert recipe_values(phase1) == COMMON
    assert phase1["data"]["resolution"] == 640
    assert phase1["trainer"]["max_steps"] == 18000
    assert phase1["init_from"] is None


def test_phase2_starts_from_phase1_weights_at_704(phase1, phase2):
    assert recipe_values(phase2) == COMMON
    assert phase2["data"]["resolution"] == 704
    assert phase2["trainer"]["max_steps"] == 22000
    assert phase2["init_from"] == "/runs/phase1"
    assert phase2["carry_optimizer"] is False
    assert phase2["caption"] != phase1["caption"]  # phase 2 modified the captions


def test_experiment_values_win_over_root_defaults(phase1):
    assert phase1["name"] == "phase1_640"


def test_toy_twins_fine_tune_the_general_base_on_unseen_scenes_with_the_card_captions():
    toy1 = printed_config("experiment=toy_phase1")
    toy2 = printed_config("experiment=toy_phase2", "init_from=runs/toy1")
    assert toy1["model"]["components"]["pretrained"] is None  # the embedded general base
    assert toy1["data"]["_target_"] == "ymn.data.latents.LatentDataModule"
    assert toy1["data"]["prepare"]["synth"]["seed"] != 0  # the base pretrained on seed 0
    assert toy1["caption"]["dropout"] == 0.15
    assert (toy1["data"]["resolution"], toy2["data"]["resolution"]) == (128, 144)  # 640 → 704
    assert toy2["init_from"] == "runs/toy1" and toy2["caption"] != toy1["caption"]
    assert toy1["caption"]["drop_hair_tags"] is False  # the card's captions keep the colour tags


def droplook_arm(steps: int) -> dict:
    """toy_phase1 with the names arm's overrides on the command line, as its runs were made."""
    return printed_config(
        "experiment=toy_phase1",
        "caption.drop_hair_tags=true",
        "caption.drop_eye_tags=true",
        "model.ema_decay=0.998",
        "probes.ema=true",
        "model.lr_scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,"
        f"_partial_:true,T_max:{steps},eta_min:3.0e-5}}",
        f"trainer.max_steps={steps}",
        "name=toy_phase1_droplook",
        "--resolve",
    )


def test_toy_droplook_is_toy_phase1_with_the_measured_arms_overrides():
    """The named experiment is the command line of the 2,700-step seed-3 run and, cut to 1,500
    steps, of the seed-2 arm that read 0.84: the cosine follows the run's length."""
    named = printed_config("experiment=toy_phase1_droplook", "--resolve")
    assert named["trainer"]["max_steps"] == 2700 and named == droplook_arm(2700)
    short = printed_config("experiment=toy_phase1_droplook", "trainer.max_steps=1500", "--resolve")
    assert short == droplook_arm(1500)


def test_toy_select_chooses_on_seeds_the_reported_reading_never_uses():
    """toy_phase1_select is the droplook run with the probes moved to validation seeds, every
    step checkpoint kept and best.ckpt by the lead reading the probes actually write."""
    from ymn.probes.identity import identity_flat_metrics

    chosen = printed_config("experiment=toy_phase1_select", "--resolve")
    droplook = printed_config("experiment=toy_phase1_droplook", "--resolve")
    probes, checkpoint = chosen["probes"], chosen["callbacks"]["checkpoint"]
    assert probes["seeds"] == list(range(64, 128)) and probes["counts"] == [1]
    assert len(probes["seeds"]) * len(probes["layouts"]) == 128  # as the study's test pass
    assert set(probes["seeds"]).isdisjoint(range(64))  # select.py's default test seeds
    steps = chosen["trainer"]["max_steps"]
    assert checkpoint["keep_last"] >= steps // probes["every_n_steps"]
    assert checkpoint["best_mode"] == "max"
    record = {"characters": ["SaitoMio"], "detected_boxes": [[0.4, 0.4, 0.6, 0.6]],
              "identities": ["SaitoMio"], "cells": [[2, 2]]}  # fmt: skip
    assert checkpoint["best_monitor"] in identity_flat_metrics([record])
    for key in ("model", "data", "caption", "trainer", "seed"):
        assert chosen[key] == droplook[key], key
