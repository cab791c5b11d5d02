"""LightningModule behaviour on the tiny model: training changes only what is trained."""

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import make_batch
from ymn.model.components import load_components, resolve_model_path
from ymn.model.export import save_diffusers
from ymn.model.module import DiffusionModule


def fit_steps(module: DiffusionModule, steps: int, tmp_path) -> L.Trainer:
    batches = [make_batch(2, 64, seed=i) for i in range(steps)]
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("train_text_encoder", [True, False])
def test_five_steps_change_only_trained_modules(tiny_components, tmp_path, train_text_encoder):
    module = DiffusionModule(
        tiny_components,
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        train_text_encoder=train_text_encoder,
    )
    before = {name: snapshot(getattr(module, name)) for name in ("vae", "text_encoder", "unet")}
    trainer = fit_steps(module, 5, tmp_path)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    changed = {
        name: any(not torch.equal(v, getattr(module, name).state_dict()[k]) for k, v in s.items())
        for name, s in before.items()
    }
    assert changed == {"vae": False, "text_encoder": train_text_encoder, "unet": True}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_targets_and_min_snr(tiny_components, prediction_type):
    from ymn.model.components import sd_scheduler

    tiny_components.scheduler = sd_scheduler(prediction_type)
    plain = DiffusionModule(tiny_components, optimizer=torch.optim.AdamW)
    weighted = DiffusionModule(tiny_components, optimizer=torch.optim.AdamW, snr_gamma=5.0)
    batch = make_batch(2, 64)
    latents = plain.batch_latents(batch)
    ids = plain.batch_input_ids(batch)
    noise, t = torch.randn_like(latents), torch.tensor([10, 900])
    a = plain.diffusion_loss(latents, ids, noise, t)
    b = weighted.diffusion_loss(latents, ids, noise, t)
    assert torch.isfinite(a).all() and a.shape == (2,)
    alpha_bar = tiny_components.scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    denominator = snr + 1 if prediction_type == "v_prediction" else snr
    expected = torch.clamp(snr, max=5.0) / denominator
    torch.testing.assert_close(b / a, expected.float(), rtol=1e-4, atol=1e-6)
    assert expected[0] < 0.1  # the low-noise step is down-weighted


def test_save_reload_is_bit_identical(tiny_components, tmp_path):
    save_diffusers(tiny_components, tmp_path / "model")
    reloaded = load_components("tiny", pretrained=str(tmp_path / "model"))
    for name in ("vae", "text_encoder", "unet"):
        original = getattr(tiny_components, name).state_dict()
        again = getattr(reloaded, name).state_dict()
        assert original.keys() == again.keys()
        assert all(torch.equal(original[k], again[k]) for k in original)
    text = "2people, fhml fvmd"
    assert reloaded.tokenizer(text).input_ids == tiny_components.tokenizer(text).input_ids


def test_missing_and_pickle_paths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_model_path(tmp_path / "nope")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="allow_pickle"):
        resolve_model_path(ckpt)
    assert resolve_model_path(ckpt, allow_pickle=True) == ckpt


def test_log_images_is_seeded(tiny_components):
    module = DiffusionModule(tiny_components, optimizer=torch.optim.AdamW)
    a = module.log_images(["1person"], [3], size=(64, 64), steps=2)
    b = module.log_images(["1person"], [3], size=(64, 64), steps=2)
    c = module.log_images(["1person"], [4], size=(64, 64), steps=2)
    assert a[0].size == (64, 64)
    assert a[0].tobytes() == b[0].tobytes() != c[0].tobytes()
    assert module.training


def test_each_ddp_rank_seeds_its_own_noise(tiny_components, monkeypatch):
    from ymn.model.module import DiffusionModule

    module = DiffusionModule(tiny_components, torch.optim.AdamW)
    monkeypatch.setattr(DiffusionModule, "current_epoch", property(lambda self: 2))
    single = module.step_seed_parts(5)
    monkeypatch.setattr(DiffusionModule, "global_rank", property(lambda self: 1))
    assert single == (module.train_seed, 2, 5)  # rank 0 / one process: unchanged stream
    assert module.step_seed_parts(5) == (*single, 1)
