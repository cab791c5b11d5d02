"""The pretrained tiny base shipped in ymn/assets/tiny-base, and the script that trains it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import train_tiny_base as main
from ymn.model.components import (
    TINY_BASE_DIR,
    build_tiny,
    load_components,
    tiny_unet,
    tiny_vae,
    vae_downsampling,
)
from ymn.model.stage_training import warmup_cosine
from ymn.model.tiny_base import TinyBaseConfig, cli_args
from ymn.model.tiny_base_data import base_caption, make_scenes
from ymn.model.vae_stages import latent_scaling_factor
from ymn.model.vae_training import to_pixels

MAX_ASSET_BYTES = 60 * 1024 * 1024  # the embedded-world issue's budget
WEIGHT_FILES = (
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
)


@pytest.fixture(scope="module")
def shipped():
    return load_components("tiny")


@pytest.fixture(scope="module")
def scenes() -> torch.Tensor:
    """Synthetic scenes the base never saw (a seed other than the training seed 0)."""
    images, _ = make_scenes("synthetic", 8, seed=12345, size=128)
    return to_pixels(images)


def test_shipped_asset_is_a_small_diffusers_folder_without_tokenizer():
    assert (TINY_BASE_DIR / "model_index.json").is_file()
    for name in WEIGHT_FILES:
        assert (TINY_BASE_DIR / name).is_file(), name
    total = sum(p.stat().st_size for p in TINY_BASE_DIR.rglob("*") if p.is_file())
    assert total <= MAX_ASSET_BYTES
    assert not (TINY_BASE_DIR / "tokenizer").exists()
    assert not list(TINY_BASE_DIR.rglob("*.bin")), "weights must be safetensors only"


def test_shipped_base_loads_as_float32(shipped):
    for module in (shipped.vae, shipped.text_encoder, shipped.unet):
        dtypes = {p.dtype for p in module.parameters()}
        assert dtypes == {torch.float32}
    assert len(shipped.tokenizer) == 49408
    assert shipped.unet.config.sample_size * vae_downsampling(shipped.vae) == 128


@torch.no_grad()
def _reconstruction_mse(vae, pixels: torch.Tensor) -> float:
    recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
    return float(torch.mean((recon.clamp(-1, 1) - pixels) ** 2))


def test_pretrained_vae_at_least_halves_the_reconstruction_error_of_random_init(shipped, scenes):
    torch.manual_seed(0)
    random_vae = tiny_vae().eval()
    trained = _reconstruction_mse(shipped.vae.eval(), scenes)
    untrained = _reconstruction_mse(random_vae, scenes)
    assert trained < 0.5 * untrained, (trained, untrained)


@torch.no_grad()
def test_scaled_latents_have_roughly_unit_std(shipped, scenes):
    latents = shipped.vae.encode(scenes).latent_dist.mean * shipped.vae.config.scaling_factor
    assert 0.5 <= float(latents.std()) <= 2.0


def test_latent_scaling_factor_normalises_std():
    latents = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 7.0
    assert float((latents * latent_scaling_factor(latents)).std()) == pytest.approx(1.0, abs=1e-4)


def test_warmup_cosine_rises_then_decays_to_floor():
    values = [warmup_cosine(step, total=100, warmup=10, floor=0.1) for step in range(100)]
    assert values[0] < values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert warmup_cosine(100, total=100, warmup=10, floor=0.1) == pytest.approx(0.1)


def test_procedural_and_synthetic_scenes_are_deterministic():
    for data in ("procedural", "synthetic"):
        a, meta_a = make_scenes(data, 3, seed=7, size=128)
        b, meta_b = make_scenes(data, 3, seed=7, size=128)
        c, _ = make_scenes(data, 3, seed=8, size=128)
        assert a.shape == (3, 3, 128, 128) and a.dtype == torch.uint8
        assert torch.equal(a, b) and meta_a == meta_b
        assert not torch.equal(a, c)


def _train(out: Path) -> Path:
    flags = ["--images", "8", "--vae-steps", "2", "--decoder-steps", "0", "--unet-steps", "2"]
    flags += ["--batch", "2"]
    work = ["--work", str(out.with_name(out.name + "-work"))]  # never the default runs/ folder
    assert main([*flags, *work, "--vae-batch", "2", "--seed", "3", "--out", str(out)]) == 0
    return out


def test_training_script_writes_a_loadable_deterministic_folder(tmp_path):
    first, second = _train(tmp_path / "a"), _train(tmp_path / "b")
    components = load_components("tiny", pretrained=str(first))
    assert components.vae.config.scaling_factor > 0
    assert not (first / "tokenizer").exists()
    for name in WEIGHT_FILES:
        a, b = load_file(first / name), load_file(second / name)
        assert a.keys() == b.keys()
        assert all(a[k].dtype == torch.float16 for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    scaling = [
        load_components("tiny", pretrained=str(p)).vae.config.scaling_factor
        for p in (first, second)
    ]
    assert np.isclose(*scaling)


def test_unet_channels_widen_every_block_and_keep_32_wide_heads():
    shipped, wide = tiny_unet().config, tiny_unet(64).config
    assert tuple(shipped.block_out_channels) == (32, 64, 128, 128)
    assert tuple(shipped.attention_head_dim) == (1, 2, 4, 4)
    assert tuple(wide.block_out_channels) == (64, 128, 256, 256)
    assert tuple(wide.attention_head_dim) == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_unet(48)


def test_unet_channels_flag_reaches_the_saved_base(tmp_path):
    flags = ["--images", "4", "--vae-steps", "1", "--decoder-steps", "0", "--colour-steps", "0"]
    flags += ["--text-steps", "0", "--unet-steps", "1", "--batch", "2", "--vae-batch", "2"]
    out, work = tmp_path / "wide", tmp_path / "wide-work"
    assert main([*flags, "--unet-channels", "64", "--out", str(out), "--work", str(work)]) == 0
    unet = load_components("tiny", pretrained=str(out)).unet
    assert tuple(unet.config.block_out_channels) == (64, 128, 256, 256)
    assert json.loads((out / "train_info.json").read_text())["config"]["unet-channels"] == "64"
    from ymn.model.tiny_base import load_stage2_weights

    narrow = build_tiny(0)  # a reading of the work folder on the shipped widths
    assert load_stage2_weights(narrow, work) == 1
    assert tuple(narrow.unet.config.block_out_channels) == (64, 128, 256, 256)
    saved = load_components("tiny", pretrained=str(out)).unet.state_dict()
    for name, value in narrow.unet.state_dict().items():
        assert torch.allclose(value, saved[name], atol=1e-2), name  # saved: float16


def test_resumed_training_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    flags = ["--images", "8", "--batch", "2", "--vae-batch", "2", "--seed", "3"]
    full = tmp_path / "full"
    steps = [
        "--vae-steps",
        "4",
        "--decoder-steps",
        "2",
        "--decoder-batch",
        "2",
        "--text-steps",
        "3",
        "--text-batch",
        "4",
        "--unet-steps",
        "4",
    ]
    steps += ["--save-every", "2"]
    assert main([*flags, *steps, "--out", str(full), "--work", str(tmp_path / "w1")]) == 0
    # the same run stopped after stage 1 (as a kill would leave it), then continued
    work = tmp_path / "w2"
    resumed = tmp_path / "resumed"
    first = [*flags, *steps, "--out", str(resumed), "--work", str(work)]
    assert main([*first, "--stage", "vae"]) == 0
    assert (work / "stage1_vae.json").is_file() and not (work / "stage2_unet.json").exists()
    assert main(first) == 0
    for name in WEIGHT_FILES:
        a, b = load_file(full / name), load_file(resumed / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_base_captions_are_generic_tags_only():
    """No count token, grid token or character name: the fine-tune is where those are learned."""
    import random

    from ymn.data.synthetic import CHARACTERS

    _, metas = make_scenes("synthetic", 40, seed=5, size=128)
    rng = random.Random(0)
    captions = [base_caption(meta, rng, dropout=0.0) for meta in metas]
    words = {tag for caption in captions for tag in caption.split(", ")}
    assert not {w for w in words if w.endswith("people") or w.endswith("person")}
    assert not words & set(CHARACTERS)
    from ymn.data.captions import GRID_TOKENS

    grid_tokens = {t for axes in GRID_TOKENS.values() for axis in axes for t in axis}
    assert not {piece for w in words for piece in w.split()} & grid_tokens
    assert {"solo", "1girl"} <= words  # booru counts a web-trained base knows
    assert sorted(base_caption(metas[0], random.Random(1), 0.0).split(", ")) == sorted(
        metas[0]["tags"]
    )
    assert base_caption(metas[0], random.Random(0), dropout=1.0) == ""


def _record_stage2_draws(monkeypatch, what: str) -> list[torch.Tensor]:
    """Every stage-2 loss call's `noise` or `timesteps`, in order (the loss itself unchanged)."""
    from ymn.model.module import DiffusionModule

    drawn: list[torch.Tensor] = []
    original = DiffusionModule.diffusion_loss

    def recording(self, latents, input_ids, noise, timesteps, *args, **kwargs):
        drawn.append({"noise": noise, "timesteps": timesteps}[what].clone())
        return original(self, latents, input_ids, noise, timesteps, *args, **kwargs)

    monkeypatch.setattr(DiffusionModule, "diffusion_loss", recording)
    return drawn


def test_stage2_draws_its_timesteps_from_the_configured_bias(tmp_path, monkeypatch):
    """`--timestep-bias high` moves stage 2's training towards high noise (uniform: the shipped
    base's `torch.randint`)."""
    drawn = _record_stage2_draws(monkeypatch, "timesteps")
    flags = ["--images", "8", "--batch", "8", "--vae-batch", "2", "--vae-steps", "1"]
    flags += ["--decoder-steps", "0"]
    bias = ["--timestep-bias", "high", "--timestep-portion", "0.1", "--timestep-multiplier", "1e9"]
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    assert main([*flags, "--unet-steps", "3", *bias, "--out", out, "--work", work]) == 0
    timesteps = torch.cat(drawn)
    assert timesteps.numel() == 24 and bool((timesteps >= 900).all())


def test_decoder_stage_changes_the_decoder_and_keeps_every_latent(tmp_path):
    """Stage 1b trains the decoder alone: a UNet trained on stage 1's latents stays valid."""
    from ymn.model.vae_stages import load_stage1_vae

    flags = ["--images", "8", "--vae-batch", "2", "--vae-steps", "2", "--stage", "vae"]
    flags += ["--decoder-batch", "2"]
    before, after = tmp_path / "before", tmp_path / "after"
    off = ["--decoder-steps", "0"]
    assert main([*flags, *off, "--work", str(before), "--out", str(tmp_path / "o1")]) == 0
    extra = ["--decoder-steps", "2"]
    assert main([*flags, *extra, "--work", str(after), "--out", str(tmp_path / "o2")]) == 0
    assert (after / "stage1b_decoder.json").is_file()
    old, new = load_stage1_vae(before), load_stage1_vae(after)
    x = to_pixels(make_scenes("synthetic", 2, seed=9, size=128)[0])
    with torch.no_grad():
        assert torch.equal(old.encode(x).latent_dist.mean, new.encode(x).latent_dist.mean)
        z = old.encode(x).latent_dist.mean
        assert not torch.equal(old.decode(z).sample, new.decode(z).sample)


def test_colour_stage_retrains_the_encoder_after_stage_1b_and_is_off_by_default(tmp_path):
    """Stage 1d fine-tunes the whole VAE from stages 1 and 1b: its latents differ, so stages
    1c and 2 must be trained on it; without the flag no stage-1d state is written."""
    from ymn.model.vae_stages import load_stage1_vae

    flags = ["--images", "8", "--vae-batch", "2", "--vae-steps", "2", "--stage", "vae"]
    flags += ["--decoder-batch", "2", "--decoder-steps", "1"]
    before, after = tmp_path / "before", tmp_path / "after"
    assert main([*flags, "--work", str(before), "--out", str(tmp_path / "o1")]) == 0
    extra = ["--colour-steps", "2"]
    assert main([*flags, *extra, "--work", str(after), "--out", str(tmp_path / "o2")]) == 0
    assert not (before / "stage1d_vae.json").exists()
    record = json.loads((after / "stage1d_vae.json").read_text())
    assert record["step"] == 2 and "balanced_l1" in record["history"][-1]
    old, new = load_stage1_vae(before), load_stage1_vae(after)
    x = to_pixels(make_scenes("synthetic", 2, seed=9, size=128)[0])
    with torch.no_grad():
        assert not torch.equal(old.encode(x).latent_dist.mean, new.encode(x).latent_dist.mean)


def test_a_v_prediction_zero_terminal_snr_base_saves_and_reloads_its_schedule(tmp_path):
    from ymn.model.tiny_base import load_stage2_weights

    flags = ["--images", "8", "--batch", "2", "--vae-batch", "2", "--vae-steps", "1"]
    flags += ["--unet-steps", "2", "--prediction-type", "v_prediction"]
    flags += ["--zero-terminal-snr", "true"]
    out, work = tmp_path / "out", tmp_path / "work"
    assert main([*flags, "--out", str(out), "--work", str(work)]) == 0
    saved = load_components("tiny", pretrained=str(out)).scheduler
    assert saved.config.prediction_type == "v_prediction"
    assert saved.config.rescale_betas_zero_snr and saved.config.timestep_spacing == "trailing"
    assert float(saved.alphas_cumprod[-1]) < 1e-6  # t = 999 is pure noise
    epsilon_base = build_tiny(0)
    assert epsilon_base.scheduler.config.prediction_type == "epsilon"
    load_stage2_weights(epsilon_base, work)  # a reading uses the schedule it trained under
    assert epsilon_base.scheduler.config.prediction_type == "v_prediction"
    assert epsilon_base.scheduler.config.rescale_betas_zero_snr


def test_the_script_defaults_are_the_shipped_recipe():
    """`make tiny-base` (no flags) trains what ships: every recorded setting is the default."""
    recorded = json.loads((TINY_BASE_DIR / "train_info.json").read_text())["config"]
    defaults = dict(arg.removeprefix("--").split("=", 1) for arg in cli_args(TinyBaseConfig()))
    where_and_how = {"out", "work", "save-every", "threads", "device"}  # not the recipe
    differing = {
        key: (value, defaults.get(key))
        for key, value in recorded.items()
        if key not in where_and_how and defaults.get(key) != value
    }
    assert not differing


def test_the_shipped_base_samples_under_v_prediction_with_zero_terminal_snr(shipped):
    config = shipped.scheduler.config
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    assert config.timestep_spacing == "trailing"


def test_zero_terminal_snr_with_epsilon_is_refused_before_any_training(tmp_path):
    work = tmp_path / "work"
    with pytest.raises(ValueError, match="v_prediction"):
        main(["--zero-terminal-snr", "yes", "--work", str(work), "--out", str(tmp_path / "o")])
    assert not work.exists()


def test_stage2_trains_on_pyramid_noise_when_asked(tmp_path, monkeypatch):
    drawn = _record_stage2_draws(monkeypatch, "noise")
    flags = ["--images", "8", "--batch", "8", "--vae-batch", "2", "--vae-steps", "1"]
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    assert main([*flags, "--unet-steps", "2", "--out", out, "--work", work]) == 0
    assert main([*flags, "--unet-steps", "4", "--pyramid-discount", "0.8", "--out", out,
                 "--work", work]) == 0  # fmt: skip
    plain, pyramid = torch.cat(drawn[:2]), torch.cat(drawn[2:])
    image_means = [float(n.mean(dim=(2, 3)).std()) for n in (plain, pyramid)]
    assert image_means[1] > 4 * image_means[0]


def test_stage2_runs_under_bfloat16_autocast_only_when_asked(tmp_path, monkeypatch):
    from ymn.model.module import DiffusionModule

    autocast_on: list[bool] = []
    original = DiffusionModule.diffusion_loss

    def recording(self, *args, **kwargs):
        autocast_on.append(torch.is_autocast_enabled("cpu"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DiffusionModule, "diffusion_loss", recording)
    flags = ["--images", "8", "--batch", "2", "--vae-batch", "2", "--vae-steps", "1"]
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    assert main([*flags, "--unet-steps", "2", "--out", out, "--work", work]) == 0
    assert main([*flags, "--unet-steps", "4", "--autocast", "bfloat16", "--out", out,
                 "--work", work]) == 0  # fmt: skip
    assert autocast_on == [False, False, True, True]
    history = json.loads((tmp_path / "work" / "stage2_unet.json").read_text())["history"]
    assert all(np.isfinite(h["loss"]) for h in history)
    with pytest.raises(ValueError, match="autocast"):
        main([*flags, "--autocast", "fp8", "--out", out, "--work", work])


@pytest.mark.gpu
def test_a_cuda_run_draws_what_a_cpu_run_draws_and_resumes_on_the_cpu(tmp_path):
    """`--device cuda` makes the same seeded draws (on the CPU) and writes CPU checkpoints."""
    assert torch.cuda.is_available(), "`make test-gpu` needs a CUDA device"
    flags = ["--images", "8", "--batch", "2", "--vae-batch", "2", "--seed", "3"]
    flags += ["--vae-steps", "3", "--text-steps", "2", "--text-batch", "4", "--unet-steps", "3"]
    flags += ["--save-every", "1", "--prediction-type", "v_prediction"]
    flags += ["--zero-terminal-snr", "true"]
    on_cpu, on_cuda = tmp_path / "cpu", tmp_path / "cuda"
    assert main([*flags, "--work", str(on_cpu), "--out", str(tmp_path / "cpu-out")]) == 0
    cuda_run = [*flags, "--work", str(on_cuda), "--out", str(tmp_path / "cuda-out")]
    assert main([*cuda_run, "--device", "cuda", "--stage", "vae"]) == 0
    assert main(cuda_run) == 0  # stages 1c and 2 on the CPU, from the CUDA run's stage 1
    for stage in ("stage1_vae", "stage1c_text", "stage2_unet"):
        first_loss = [
            json.loads((work / f"{stage}.json").read_text())["history"][0]["loss"]
            for work in (on_cpu, on_cuda)
        ]
        # step 0 starts from the same weights and draws; TF32 convolutions round differently
        assert first_loss[1] == pytest.approx(first_loss[0], rel=1e-2), stage
    components = load_components("tiny", pretrained=str(tmp_path / "cuda-out"))
    assert components.scheduler.config.prediction_type == "v_prediction"


def test_balanced_base_scenes_recast_the_same_scenes_with_every_look_equally_often():
    """`--stage2-characters balanced`: scenes of the same kinds and people counts in which each
    roster character appears about equally often (natural: the leads 4x the rarest)."""
    from collections import Counter

    from ymn.data.synthetic import CHARACTERS

    n = 400
    natural_images, natural = make_scenes("synthetic", n, seed=3, size=128)
    _, balanced = make_scenes("synthetic", n, seed=3, size=128, character_mix="balanced")
    assert [m["n_people"] for m in natural] == [m["n_people"] for m in balanced]

    def cast(metas):
        counts = Counter(c for m in metas for c in m["characters"] if c in CHARACTERS)
        return [counts[name] for name in CHARACTERS]

    assert min(cast(natural)) / max(cast(natural)) < 0.4
    assert min(cast(balanced)) / max(cast(balanced)) > 0.6  # 62/91 at this seed
    again, _ = make_scenes("synthetic", n, seed=3, size=128)
    assert torch.equal(natural_images, again)  # the default draw is unchanged
    with pytest.raises(ValueError, match="character mix"):
        make_scenes("synthetic", 1, seed=3, size=128, character_mix="leads")


def test_look_tags_name_every_outfit_and_tell_the_unnamed_brown_apart():
    """`caption_tags="look"`: the same scenes, each person's outfit colour named, and the
    unnamed people's brown (a colour Natsume's `brown hair` tag also names) renamed."""
    from ymn.data.synthetic_draw import OUTFITS
    from ymn.model.tiny_base_data import OUTFIT_TAGS, scene_spec

    n = 120
    hair_images, hair = make_scenes("synthetic", n, seed=3, size=128)
    look_images, look = make_scenes("synthetic", n, seed=3, size=128, caption_tags="look")
    assert torch.equal(hair_images, look_images)
    assert len(set(OUTFIT_TAGS.values())) == len(OUTFITS)
    seen = {"unnamed brown": 0, "natsume": 0}
    for index, (plain, described) in enumerate(zip(hair, look, strict=True)):
        people = scene_spec(3, index, 128).people
        assert {OUTFIT_TAGS[p.look.outfit] for p in people} <= set(described["tags"])
        unnamed = [p.look for p in people if p.look.name == "unknown"]
        unnamed_brown = any(look.hair_tag == "brown hair" for look in unnamed)
        natsume = any(p.look.name == "Natsume" for p in people)
        seen["unnamed brown"] += unnamed_brown
        seen["natsume"] += natsume
        assert ("dark brown hair" in described["tags"]) == unnamed_brown
        assert ("brown hair" in described["tags"]) == natsume
        kept = [t for t in plain["tags"] if t != "brown hair"]
        assert kept == [t for t in described["tags"] if t in kept]  # nothing else changed
    assert seen["unnamed brown"] and seen["natsume"]
    with pytest.raises(ValueError, match="caption tags"):
        make_scenes("synthetic", 1, seed=3, size=128, caption_tags="outfit")
    _, apart = make_scenes("synthetic", n, seed=3, size=128, caption_tags="distinct-hair")
    for described, hair_apart in zip(look, apart, strict=True):  # the look's hair, no outfits
        assert hair_apart["tags"] == [t for t in described["tags"] if not t.endswith(" shirt")]
    assert any(
        p["tags"] != a["tags"] for p, a in zip(hair, apart, strict=True)
    )  # the unnamed brown renamed
    _, unshared = make_scenes("synthetic", n, seed=3, size=128, caption_tags="unshared-hair")
    for hair_apart, own_word in zip(apart, unshared, strict=True):  # the same rename, one word
        renamed = ["chestnut hair" if t == "dark brown hair" else t for t in hair_apart["tags"]]
        assert own_word["tags"] == renamed


def test_the_hair_tag_set_is_ymn_synths_tags_unchanged():
    from ymn.data.synthetic import render_scene
    from ymn.model.tiny_base_data import scene_spec, synthetic_scene

    renamed = 0
    for index in range(40):
        _, synth = render_scene(scene_spec(3, index, 128), 128)
        assert synthetic_scene(3, index, 128)[1]["tags"] == synth["tags"]
        renamed += (
            synthetic_scene(3, index, 128, caption_tags="unshared-hair")[1]["tags"] != synth["tags"]
        )
    assert renamed  # the scenes hold an unnamed brown, which the other sets rename


def test_the_unshared_tag_set_names_the_unnamed_brown_without_any_roster_tags_words():
    from ymn.data.synthetic import CHARACTERS, UNKNOWN_HAIR
    from ymn.model.tiny_base_data import UNNAMED_HAIR_RETAGS

    roster_words = {w for look in CHARACTERS.values() for w in look.hair_tag.split()} - {"hair"}
    taken = {look.hair_tag for look in CHARACTERS.values()} | {tag for _, tag in UNKNOWN_HAIR}
    distinct = set(UNNAMED_HAIR_RETAGS["distinct-hair"].values())
    unshared = set(UNNAMED_HAIR_RETAGS["unshared-hair"].values())
    assert distinct and unshared and not (distinct | unshared) & taken
    assert all(set(tag.split()) & roster_words for tag in distinct)  # keeps `brown`
    assert not any(set(tag.split()) & roster_words for tag in unshared)


def test_caption_tags_flag_reaches_stage_2_and_a_resume_on_other_tags_is_refused(
    tmp_path, monkeypatch
):
    import ymn.model.tiny_base as tiny_base
    from ymn.model.contrastive import TEXT_STAGE
    from ymn.model.tiny_base_data import base_caption_tags, record_caption_tags

    captions: list[str] = []
    original = tiny_base.tokenize

    def recording(tokenizer, texts):
        captions.extend(texts)
        return original(tokenizer, texts)

    monkeypatch.setattr(tiny_base, "tokenize", recording)
    flags = ["--images", "8", "--batch", "8", "--vae-batch", "2", "--vae-steps", "1"]
    flags += ["--unet-steps", "2", "--caption-dropout", "0"]
    out, work = tmp_path / "out", tmp_path / "work"
    assert main([*flags, "--caption-tags", "look", "--out", str(out), "--work", str(work)]) == 0
    assert len(captions) == 16 and all(" shirt" in caption for caption in captions)
    assert base_caption_tags(work) == base_caption_tags(out) == "look"
    assert base_caption_tags(TINY_BASE_DIR) == "hair"  # the shipped base's
    with pytest.raises(ValueError, match="--caption-tags look"):
        main([*flags, "--caption-tags", "hair", "--out", str(out), "--work", str(work)])
    with pytest.raises(ValueError, match="caption tags"):
        main([*flags, "--caption-tags", "outfit", "--work", str(tmp_path / "w2")])
    assert not (tmp_path / "w2").exists()
    older = tmp_path / "older"  # a folder from before the record: its text stage read hair tags
    older.mkdir()
    (older / f"{TEXT_STAGE}.json").write_text("{}")
    with pytest.raises(ValueError, match="--caption-tags hair, not look"):
        record_caption_tags(older, "look", text_stages=(TEXT_STAGE, tiny_base.UNET_STAGE))
