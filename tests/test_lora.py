"""LoRA / LoCon via peft: only the adapters train, and the exported kohya file is what diffusers'
own loader (and ComfyUI's key map) turns back into the trained model."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors import safe_open

from tests.conftest import small_train_command, subprocess_env
from tests.test_config import compose_config
from ymn.data.tokenizer import tokenize
from ymn.model.adapters import LoraAdapter, has_adapters
from ymn.model.components import build_tiny, components_pipeline, load_components
from ymn.model.export import export_run, run_export
from ymn.model.lora_export import LORA_FILE_NAME
from ymn.model.module import DiffusionModule
from ymn.reliability.config_schema import iter_problems

LOCON = dict(rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0)


def adapter_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The LoRA matrices of `model` by name (what the optimizer should see)."""
    return [p for name, p in model.named_parameters() if ".lora_" in name]


def _module(components, train_text_encoder: bool = True, **adapter) -> DiffusionModule:
    return DiffusionModule(
        components,
        functools.partial(torch.optim.AdamW, lr=1e-2),
        train_text_encoder=train_text_encoder,
        adapter=LoraAdapter(**adapter),
    )


def _loss(module: DiffusionModule, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    ids = tokenize(module.tokenizer, ["1girl, solo", "2girls, mountain"])
    noise = torch.randn(2, 4, 8, 8, generator=g)
    return module.diffusion_loss(latents, ids, noise, torch.tensor([10, 900])).mean()


def _train(module: DiffusionModule, steps: int = 3) -> None:
    """A few AdamW steps with the module's own optimizer: every LoRA up matrix leaves zero."""
    optimizer = module.configure_optimizers()
    module.train()
    for step in range(steps):
        optimizer.zero_grad()
        _loss(module, step).backward()
        optimizer.step()
    module.eval()


def _outputs(unet, text_encoder, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder hidden states and the UNet prediction conditioned on them."""
    g = torch.Generator().manual_seed(7)
    ids = tokenize(tokenizer, ["3girls, fhml fvmd"])
    with torch.no_grad():
        text = text_encoder(ids)[0]
        pred = unet(torch.randn(1, 4, 16, 16, generator=g), torch.tensor([400]), text).sample
    return text, pred


@pytest.fixture(scope="module")
def trained(module_tmp) -> tuple[DiffusionModule, Path, list[Path]]:
    """A LoCon module (UNet + text encoder) trained 3 steps and exported as a run does."""
    module = _module(build_tiny(0), **LOCON)
    _train(module)
    out = module_tmp.mktemp("lora") / "export"
    return module, out, export_run(module, out)


def test_optimizer_sees_only_adapter_params_and_only_they_change(tiny_components):
    module = _module(tiny_components, **LOCON)
    adapters = adapter_parameters(module.unet) + adapter_parameters(module.text_encoder)
    optimizer = module.configure_optimizers()
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert adapters and {id(p) for p in in_optimizer} == {id(p) for p in adapters}

    models = {"unet": module.unet, "text_encoder": module.text_encoder, "vae": module.vae}
    before = {f"{n}.{k}": v.clone() for n, m in models.items() for k, v in m.state_dict().items()}
    _train(module)
    after = {f"{n}.{k}": v for n, m in models.items() for k, v in m.state_dict().items()}
    base = [k for k in before if ".lora_" not in k]
    ups = [k for k in before if ".lora_B." in k]
    assert any(k.startswith("text_encoder.") for k in ups)
    assert any(".resnets.0.conv1." in k for k in ups)  # LoCon reached the convs
    assert all(torch.equal(before[k], after[k]) for k in base)
    assert all(not torch.equal(before[k], after[k]) for k in ups)


def test_diffusers_load_lora_weights_reproduces_the_trained_model(trained):
    module, out, _ = trained
    trained_text, trained_pred = _outputs(module.unet, module.text_encoder, module.tokenizer)

    pipe = components_pipeline(build_tiny(0))  # the same random base, without adapters
    base_text, base_pred = _outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    pipe.load_lora_weights(str(out), weight_name=LORA_FILE_NAME)
    lora_text, lora_pred = _outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer)

    assert (trained_pred - base_pred).abs().max() > 1e-2  # the adapters do change the model
    assert (trained_text - base_text).abs().max() > 1e-2
    torch.testing.assert_close(lora_text, trained_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lora_pred, trained_pred, atol=1e-5, rtol=1e-5)


def test_the_merged_export_is_the_trained_model(trained):
    module, out, written = trained
    names = [p.name for p in written]
    assert names[:3] == ["diffusers", "model.safetensors", LORA_FILE_NAME]
    assert set(names[3:]) <= {"README.md", "text_encoding.json"}  # the model card, when written
    trained_text, trained_pred = _outputs(module.unet, module.text_encoder, module.tokenizer)
    for source in (out / "diffusers", out / "model.safetensors"):
        merged = load_components(pretrained=str(source))
        assert not has_adapters(merged.unet)
        text, pred = _outputs(merged.unet, merged.text_encoder, merged.tokenizer)
        torch.testing.assert_close(text, trained_text, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pred, trained_pred, atol=1e-4, rtol=1e-4)
    assert has_adapters(module.unet)  # exporting left the live model as it was


def test_ymn_export_rebuilds_a_lora_run_from_its_checkpoint(trained, tmp_path):
    """An interrupted run (no export/): base + checkpoint with adapter weights → all 3 files."""
    module, _, _ = trained
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    model = {
        "components": {"_target_": "ymn.model.components.build_tiny", "seed": 0},
        "adapter": {"_target_": "ymn.model.adapters.LoraAdapter", **LOCON},
        "train_text_encoder": True,
    }
    OmegaConf.save(OmegaConf.create({"model": model}), run_dir / "config_resolved.yaml")
    torch.save({"state_dict": module.state_dict()}, run_dir / "checkpoints" / "last.ckpt")
    written = run_export([str(run_dir)])
    names = [p.name for p in written]
    assert names[:3] == ["diffusers", "model.safetensors", LORA_FILE_NAME]
    assert set(names[3:]) <= {"README.md", "text_encoding.json"}  # the model card, when written
    trained_text, trained_pred = _outputs(module.unet, module.text_encoder, module.tokenizer)
    merged = load_components(pretrained=str(written[0]))
    pipe = components_pipeline(build_tiny(0))
    pipe.load_lora_weights(str(written[2].parent), weight_name=LORA_FILE_NAME)
    for unet, text_encoder in ((merged.unet, merged.text_encoder), (pipe.unet, pipe.text_encoder)):
        text, pred = _outputs(unet, text_encoder, module.tokenizer)
        torch.testing.assert_close(text, trained_text, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pred, trained_pred, atol=1e-4, rtol=1e-4)


def test_kohya_keys_are_the_ones_comfyui_maps(trained):
    """ComfyUI's `model_lora_keys_unet` maps `lora_unet_` + a diffusers UNet weight's module
    path with dots as underscores; its CLIP map: `lora_te_text_model_encoder_layers_{i}_{name}`."""
    module, out, _ = trained
    with safe_open(str(out / LORA_FILE_NAME), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    names = {k.split(".")[0] for k in keys}
    suffixes = {k.split(".", 1)[1] for k in keys}
    assert suffixes == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert len(keys) == 3 * len(names)
    base = build_tiny(0).unet.state_dict()
    comfy_unet = {"lora_unet_" + k[: -len(".weight")].replace(".", "_") for k in base}
    unet_names = {n for n in names if n.startswith("lora_unet_")}
    text_names = names - unet_names
    assert unet_names <= comfy_unet
    assert all(n.startswith("lora_te_text_model_encoder_layers_") for n in text_names)

    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert shapes[f"{q}.lora_down.weight"] == (4, 32) and shapes[f"{q}.alpha"] == ()
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert shapes[f"{conv}.lora_down.weight"] == (2, 32, 3, 3)
    assert shapes[f"{conv}.lora_up.weight"] == (32, 2, 1, 1)
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2" in text_names
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_module"] == "networks.lora"


def test_text_encoder_adapters_follow_train_text_encoder(tiny_components):
    module = _module(tiny_components, train_text_encoder=False, rank=2)
    assert has_adapters(module.unet) and not has_adapters(module.text_encoder)
    assert all(not p.requires_grad for p in module.text_encoder.parameters())


def test_frozen_text_encoder_layers_keep_their_adapters_still(tiny_components):
    """model.text_encoder_controls.freeze_layers=1: layer 0's LoRA is out of the optimizer."""
    module = DiffusionModule(
        tiny_components,
        torch.optim.AdamW,
        adapter=LoraAdapter(rank=2),
        text_encoder_controls={"freeze_layers": 1},
    )
    optimized = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    text = dict(module.text_encoder.named_parameters())
    layer0 = [p for n, p in text.items() if ".lora_" in n and "layers.0." in n]
    layer1 = [p for n, p in text.items() if ".lora_" in n and "layers.1." in n]
    assert layer0 and layer1
    assert not any(id(p) in optimized for p in layer0)
    assert all(id(p) in optimized for p in layer1)


def test_text_encoder_adapters_train_under_gradient_checkpointing(tiny_components):
    module = DiffusionModule(
        tiny_components,
        torch.optim.AdamW,
        gradient_checkpointing=True,
        adapter=LoraAdapter(rank=2),
    )
    module.train()
    _loss(module).backward()
    text_ups = [p for n, p in module.text_encoder.named_parameters() if ".lora_B." in n]
    assert text_ups and all(p.grad is not None and p.grad.abs().sum() > 0 for p in text_ups)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"rank": 0}, "model.adapter.rank"),
        ({"alpha": -1.0}, "model.adapter.alpha"),
        ({"dropout": 1.0}, "model.adapter.dropout"),
        ({"conv_rank": -1}, "model.adapter.conv_rank"),
        ({"conv_rank": 2, "unet": False}, "model.adapter.conv_rank"),
    ],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        LoraAdapter(**kwargs)


def test_a_target_that_matches_nothing_is_refused(tiny_components):
    with pytest.raises(ValueError, match="model.adapter.unet_targets: 'to_qq'"):
        _module(tiny_components, unet_targets=["to_qq"])


def test_nothing_to_train_is_refused(tiny_components):
    with pytest.raises(ValueError, match="model.adapter.unet=false"):
        _module(tiny_components, train_text_encoder=False, unet=False)


def test_the_adapter_configs_compose_into_a_lora_module():
    assert "adapter" not in compose_config(["paths.run_dir=/tmp/ymn-compose"]).model
    lora = compose_config(["model/adapter=lora", "paths.run_dir=/tmp/ymn-compose"])
    assert instantiate(lora.model.adapter) == LoraAdapter()
    cfg = compose_config(["model/adapter=locon", "model.adapter.rank=4", "paths.run_dir=/tmp/x"])
    assert not list(iter_problems(cfg))
    module = instantiate(cfg.model)
    assert module.adapter == LoraAdapter(rank=4, conv_rank=4, conv_alpha=1.0)
    assert has_adapters(module.unet) and has_adapters(module.text_encoder)
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n for n in names)


@pytest.mark.slow
def test_ymn_train_with_lora_exports_what_diffusers_loads(tmp_path, tiny_model):
    """The whole path: `ymn-train model/adapter=lora` (5 steps), then the kohya file on the base
    gives the exported merged model's outputs."""
    command = small_train_command(
        tmp_path, tiny_model, tmp_path / "run", "model/adapter=lora", "model.optimizer.lr=1e-2"
    )
    command = ["export=true" if a == "export=false" else a for a in command]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    export = tmp_path / "run" / "export"
    merged = load_components(pretrained=str(export / "diffusers"))
    pipe = components_pipeline(load_components(pretrained=str(tiny_model)))
    base_text, base_pred = _outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    pipe.load_lora_weights(str(export), weight_name=LORA_FILE_NAME)
    lora_text, lora_pred = _outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    text, pred = _outputs(merged.unet, merged.text_encoder, merged.tokenizer)
    assert (pred - base_pred).abs().max() > 1e-3 and (text - base_text).abs().max() > 1e-3
    torch.testing.assert_close(lora_text, text, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lora_pred, pred, atol=1e-4, rtol=1e-4)
