"""Single-file export/loading (LDM layout, A1111/ComfyUI) and ymn-export, on the tiny model."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from tokenizers import AddedToken
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast

from ymn.data.tokenizer import load_clip_tokenizer, save_tokenizer
from ymn.model.components import TINY_BASE_DIR, Components, build_tiny, load_components
from ymn.model.export import SINGLE_FILE_NAME, export_both, export_run, save_diffusers
from ymn.model.export import run_export as export_main
from ymn.model.single_file import (
    CONFIG_METADATA_KEY,
    SD15_CONFIG_DIR,
    components_to_ldm,
    export_single_file,
    load_single_file,
)

PARTS = ("unet", "vae", "text_encoder")
SD15_KEYS = (  # names as they appear in SD 1.5's original checkpoint
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.middle_block.1.proj_in.weight",
    "model.diffusion_model.out.2.weight",
    "first_stage_model.encoder.down.0.block.0.conv1.weight",
    "first_stage_model.decoder.mid.attn_1.q.weight",
    "first_stage_model.quant_conv.weight",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.text_model.final_layer_norm.weight",
)
LDM_KEY = re.compile(
    r"^(model\.diffusion_model\.(input_blocks|middle_block|output_blocks|time_embed|out)\.\d+\."
    r"|first_stage_model\.((en|de)coder\.(conv_in|conv_out|norm_out|mid\.(block_\d|attn_1)"
    r"|down\.\d\.(block\.\d|downsample)|up\.\d\.(block\.\d|upsample))|(post_)?quant_conv)\."
    r"|cond_stage_model\.transformer\.text_model\.(embeddings|encoder\.layers\.\d+|final_layer_norm)\.)"
)


def assert_same_weights(expected: Components, actual: Components) -> None:
    for part in PARTS:
        want, got = getattr(expected, part).state_dict(), getattr(actual, part).state_dict()
        assert set(want) == set(got), part
        for key, value in want.items():
            assert got[key].dtype == torch.float32, f"{part}.{key}"
            assert torch.equal(got[key], value.float()), f"{part}.{key} differs"


@pytest.fixture(scope="module")
def tiny() -> Components:
    return build_tiny(0)


@pytest.fixture(scope="module")
def exported(tiny, module_tmp):
    return export_single_file(tiny, module_tmp.mktemp("sf") / "tiny.safetensors")


def file_keys(path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_export_uses_the_sd1_ldm_key_layout(exported, tiny):
    keys = file_keys(exported)
    for key in SD15_KEYS:
        assert key in keys
    assert [k for k in keys if not LDM_KEY.match(k)] == []
    n_params = sum(len(getattr(tiny, p).state_dict()) for p in PARTS)
    assert len(keys) == n_params
    with safe_open(str(exported), framework="pt") as f:
        assert f.get_slice("first_stage_model.decoder.mid.attn_1.q.weight").get_shape()[2:] == [
            1,
            1,
        ]  # LDM stores the VAE attention projections as 1x1 convolutions


def test_sd15_configs_match_the_sd15_architecture():
    """The shipped configs give SD 1.5's parameter counts and its original key names."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(SD15_CONFIG_DIR / "unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    ldm = components_to_ldm(Components(vae, text, None, unet, None))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
    assert [sum(k.startswith(p) for k in ldm) for p in prefixes] == [686, 248, 196]
    for key in SD15_KEYS + (
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.input_blocks.9.0.op.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
    ):
        assert key in ldm, key
    assert [k for k in ldm if not LDM_KEY.match(k)] == []


def test_diffusers_loads_our_single_file_identically(exported, tiny, tmp_path):
    """ymn weights → single file → diffusers' own from_single_file (given a diffusers folder)."""
    folder = save_diffusers(tiny, tmp_path / "diffusers")
    pipe = StableDiffusionPipeline.from_single_file(
        str(exported),
        config=str(folder),
        local_files_only=True,
        tokenizer=load_clip_tokenizer(),
        safety_checker=None,
        feature_extractor=None,
    )
    assert_same_weights(tiny, pipe)


def test_diffusers_folder_to_single_file_to_ymn(tmp_path):
    """diffusers folder → single file → load_single_file: weights and scheduler config kept."""
    source = build_tiny(1)
    source.scheduler = DDPMScheduler.from_config(
        source.scheduler.config, prediction_type="v_prediction"
    )
    folder = save_diffusers(source, tmp_path / "diffusers")
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    from_folder = Components(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler)
    path = export_single_file(from_folder, tmp_path / "m.safetensors")
    loaded = load_single_file(path)
    assert_same_weights(from_folder, loaded)
    assert_same_weights(source, loaded)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert isinstance(loaded.scheduler, DDPMScheduler)
    via_hydra_entry = load_components(pretrained=str(path))
    assert_same_weights(source, via_hydra_entry)


def test_fp16_export_halves_the_file_and_loads(exported, tiny, tmp_path):
    path = export_single_file(tiny, tmp_path / "half.safetensors", dtype=torch.float16)
    ratio = path.stat().st_size / exported.stat().st_size
    assert 0.45 < ratio < 0.55
    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in list(f.keys())[:20]} == {torch.float16}
    loaded = load_single_file(path)
    halved = build_tiny(0)
    for part in PARTS:
        getattr(halved, part).half()
    assert_same_weights(halved, loaded)
    assert tiny.unet.dtype == torch.float32  # exporting does not touch the live model


def test_pickle_checkpoint_needs_opt_in(exported, tiny, tmp_path):
    ldm = {k: v.clone() for k, v in components_to_ldm(tiny).items()}
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": ldm, "global_step": 7}, ckpt)
    with pytest.raises(ValueError, match="pickle.*allow_pickle"):
        load_single_file(ckpt)
    with pytest.raises(ValueError, match="pickle"):
        load_components(pretrained=str(ckpt))
    config = save_diffusers(tiny, tmp_path / "config")
    assert_same_weights(tiny, load_single_file(ckpt, allow_pickle=True, config=config))


def test_foreign_file_without_config_must_be_sd1(tiny, tmp_path):
    """No embedded config → SD 1.5's; a file of another width is refused up front."""
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in components_to_ldm(tiny).items()}, str(path))
    with pytest.raises(ValueError, match="cross-attention width 64"):
        load_single_file(path)
    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="not an SD 1.x single-file"):
        load_single_file(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_single_file(tmp_path / "nope.safetensors")


class StubModule(torch.nn.Module):
    """What export_run needs from DiffusionModule: components() and an optional EMA."""

    def __init__(self, components: Components, ema: EMAModel | None = None) -> None:
        super().__init__()
        self.parts, self.unet, self.ema = components, components.unet, ema

    def components(self) -> Components:
        return self.parts


def test_export_run_writes_both_formats_with_ema_weights(tmp_path):
    components = build_tiny(0)
    ema = EMAModel(components.unet.parameters())
    for shadow in ema.shadow_params:
        shadow.add_(1.0)
    live = {k: v.clone() for k, v in components.unet.state_dict().items()}
    written = export_run(StubModule(components, ema), tmp_path / "export")
    assert written == [tmp_path / "export" / "diffusers", tmp_path / "export" / SINGLE_FILE_NAME]
    loaded = load_single_file(written[1])
    for name, param in loaded.unet.named_parameters():
        assert torch.equal(param, live[name] + 1.0), name
    assert all(torch.equal(v, live[k]) for k, v in components.unet.state_dict().items())
    folder = load_components(pretrained=str(written[0]))
    assert_same_weights(loaded, folder)


def test_export_run_single_file_fp16_keeps_the_folder_fp32(tmp_path):
    """`export_single_file_fp16=true`: the shared single file halves, the folder stays fp32."""
    components = build_tiny(0)
    full = export_single_file(components, tmp_path / "full.safetensors")
    folder, single = export_run(StubModule(components), tmp_path / "export", single_file_fp16=True)
    assert single.stat().st_size < 0.55 * full.stat().st_size
    with safe_open(str(single), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    assert components.unet.dtype == torch.float32


def write_run_config(run_dir, seed: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config_resolved.yaml").write_text(
        f"model:\n  components:\n    _target_: ymn.model.components.build_tiny\n    seed: {seed}\n"
    )


def test_cli_from_run_export_adds_single_file_and_fp16(tmp_path, capsys):
    run = tmp_path / "run"
    write_run_config(run, 0)
    tiny = build_tiny(2)
    save_diffusers(tiny, run / "export" / "diffusers")
    written = export_main([str(run)])
    assert written[1] == run / "export" / SINGLE_FILE_NAME
    assert str(written[1]) in capsys.readouterr().out
    assert_same_weights(tiny, load_single_file(written[1]))
    half = export_main([str(run), "--fp16"])
    assert half[0] == run / "export-fp16" / "diffusers"
    assert half[1].stat().st_size < 0.55 * written[1].stat().st_size
    assert load_components(pretrained=str(half[0])).unet.dtype == torch.float32


@pytest.mark.parametrize("out", ["--out", "default"])
def test_cli_from_last_checkpoint(tmp_path, out):
    """No export yet: rebuild the run's model from its config, load checkpoints/last.ckpt;
    both formats are written, into RUN/export by default."""
    run = tmp_path / "run"
    write_run_config(run, 0)
    trained = build_tiny(3)
    state = {f"{p}.{k}": v for p in PARTS for k, v in getattr(trained, p).state_dict().items()}
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": state, "epoch": 1}, run / "checkpoints" / "last.ckpt")
    args = ["--out", str(tmp_path / "out")] if out == "--out" else []
    written = export_main([str(run), *args])
    assert written[0] == (tmp_path / "out" if args else run / "export") / "diffusers"
    assert_same_weights(trained, load_single_file(written[1]))
    assert_same_weights(trained, load_components(pretrained=str(written[0])))


def test_cli_needs_out_for_a_plain_model(exported):
    with pytest.raises(SystemExit, match="ymn-export: .*--out"):
        export_main([str(exported)])


# ---------------------------------------------------------------------------------------------
# The diffusers folder in the reference SD 1.x layout, without local paths
# ---------------------------------------------------------------------------------------------

REFERENCE_TOKENIZER_FILES = {
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
}
CAPTIONS = ["1person, AobaKokona, fhmd fvmd", "3people, mountain, Hello World!!", "tag " * 90]


def test_diffusers_folder_has_the_reference_text_encoder_keys_and_tokenizer(tmp_path):
    """transformers 4.x re-initialises text-encoder weights lacking `text_model.` (silently);
    experiments/compat/transformers4.py loads such a folder in 4.x itself."""
    tiny = build_tiny(0)
    folder = save_diffusers(tiny, tmp_path / "diffusers")
    keys = file_keys(folder / "text_encoder" / "model.safetensors")
    assert len(keys) == len(tiny.text_encoder.state_dict())
    assert [k for k in keys if not k.startswith("text_model.")] == []
    assert "text_model.embeddings.token_embedding.weight" in keys
    assert {p.name for p in (folder / "tokenizer").iterdir()} == REFERENCE_TOKENIZER_FILES
    want = tiny.tokenizer(CAPTIONS, padding="max_length", truncation=True).input_ids
    for cls in (CLIPTokenizer, CLIPTokenizerFast):
        loaded = cls.from_pretrained(folder / "tokenizer", local_files_only=True)
        assert len(loaded) == 49408
        assert loaded(CAPTIONS, padding="max_length", truncation=True).input_ids == want
    assert_same_weights(tiny, load_components(pretrained=str(folder)))


def test_tokenizer_folder_keeps_added_tokens(tmp_path):
    tokenizer = load_clip_tokenizer()
    tokenizer.add_tokens([AddedToken("3people", single_word=True, normalized=True)])
    save_tokenizer(tokenizer, tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(loaded) == 49409 and loaded.convert_tokens_to_ids("3people") == 49408
    assert loaded(CAPTIONS).input_ids == tokenizer(CAPTIONS).input_ids


ABSOLUTE_PATH = re.compile(r"^(~?/[^/\s]+/|[A-Za-z]:[\\/])")  # /home/..., ~/x/, C:\\


def json_strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *json_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    return [value] if isinstance(value, str) else []


def test_exports_carry_no_local_paths(tmp_path):
    """A model loaded from disk knows where it came from (`_name_or_path`); no export says."""
    loaded = load_components()  # the embedded tiny base, read from this checkout
    assert str(TINY_BASE_DIR) in str(loaded.unet.config.get("_name_or_path"))
    written = export_both(loaded, tmp_path / "export")
    with safe_open(str(written[1]), framework="pt") as f:
        metadata = f.metadata()
    documents = {
        name: json.loads(text) for name, text in json.loads(metadata[CONFIG_METADATA_KEY]).items()
    }
    configs = [p for p in written[0].rglob("*.json") if p.name != "vocab.json"]  # vocab: data
    documents.update({str(p): json.loads(p.read_text()) for p in configs})
    assert "unet/config.json" in documents and len(documents) >= 10
    for name, document in documents.items():
        text = json.dumps(document)
        assert "name_or_path" not in text, name
        assert str(tmp_path) not in text and str(TINY_BASE_DIR.parent) not in text, name
        assert [s for s in json_strings(document) if ABSOLUTE_PATH.match(s)] == [], name
    assert_same_weights(loaded, load_single_file(written[1]))
