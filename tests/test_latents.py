"""Latent cache: cached latents equal a fresh encode of the same crop, batches train, guards."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from test_stream import make_tree

from ymn.data.buckets import apply_crop, plan_crop
from ymn.data.decode import SkipCounter, iter_tar, parse_sample, resolve_shards, to_tensor
from ymn.data.latent_source import (
    LatentCacheError,
    LatentSource,
    check_cache,
    read_index,
    vae_fingerprint,
)
from ymn.data.latents import LatentDataModule, cache_latents, cached_crop, main
from ymn.data.pack import pack_folder
from ymn.data.pixels import PixelSource
from ymn.data.sample_source import StreamConfig
from ymn.data.stream import TrainStream
from ymn.model.components import build_tiny
from ymn.model.module import DiffusionModule

RES = 64


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


@pytest.fixture(scope="module")
def shards(module_tmp) -> Path:
    tmp = module_tmp.mktemp("latents")
    root = make_tree(tmp / "root", {"a": 6, "b": 4}, {"a": 2})
    out = tmp / "shards"
    pack_folder(root, out, shard_size=4, progress=False)
    return out


@pytest.fixture(scope="module")
def cache(shards: Path, tiny) -> Path:
    out = shards.parent / "cache"
    cache_latents(str(shards), out, tiny.vae, resolution=RES, flip=True, progress=False)
    return out


def first_sample(shards: Path):
    paths, _ = resolve_shards(str(shards))
    counter = SkipCounter()
    key, parts = next(iter(iter_tar(paths[0], counter)))
    return parse_sample(paths[0], key, parts, counter)


def test_cached_latents_equal_a_fresh_encode_of_the_same_crop(shards, cache, tiny) -> None:
    from safetensors import safe_open

    sample = first_sample(shards)
    image = sample.image()
    bucket, plan = cached_crop(image.size, RES, "center")
    assert plan == plan_crop(image.size, bucket, "center", random.Random(0))
    stored = safe_open(str(cache / "shard-000000.safetensors"), framework="pt")
    for view, flip in enumerate((False, True)):
        pixels = to_tensor(apply_crop(image, bucket, plan, flip))[None]
        with torch.no_grad():
            dist = tiny.vae.encode(pixels).latent_dist
        scale = tiny.vae.config.scaling_factor
        torch.testing.assert_close(stored.get_tensor(f"0/{view}/mean")[None], dist.mean * scale)
        torch.testing.assert_close(stored.get_tensor(f"0/{view}/std")[None], dist.std * scale)
    entry = json.loads((cache / "shard-000000.json").read_text())[0]
    assert entry["key"] == sample.key and tuple(entry["bucket"]) == bucket
    left, right = entry["metas"][0]["facepos"][0], entry["metas"][1]["facepos"][0]
    assert right[0] == pytest.approx(1 - left[2]) and entry["metas"][1]["flipped"] is True


def test_cache_covers_every_sample_and_records_its_settings(shards, cache, tiny) -> None:
    index = read_index(cache)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert sum(s["n_samples"] for s in index["shards"]) == manifest["total_images"]
    assert (index["resolution"], index["crop"], index["flip"]) == (RES, "center", True)
    assert index["categories"] == manifest["categories"]
    assert index["scaling_factor"] == tiny.vae.config.scaling_factor


def test_stream_draws_match_the_pixel_stream_and_captions_are_per_draw(shards, cache) -> None:
    kw = dict(resolution=RES, batch_size=2, val_fraction=0.2, seed=3, shuffle_buffer=4)
    pixels = PixelSource(*resolve_shards(str(shards)))
    pixel_keys = sorted(
        k for b in TrainStream(pixels, StreamConfig(crop="center", **kw)) for k in b["keys"]
    )
    stream = TrainStream(LatentSource(cache), StreamConfig(crop="center", flip_p=0.5, **kw))
    batches = list(stream)
    # same draw plan and bucket grouping as the pixel stream (drawn copies per key)
    assert sorted(k for b in batches for k in b["keys"]) == pixel_keys
    for batch in batches:
        assert "pixel_values" not in batch and batch["latents"].shape[:2] == (2, 4)
        assert len(batch["captions"]) == len(batch["meta"]) == 2
    flips = {m["flipped"] for b in batches for m in b["meta"]}
    assert flips == {True, False}
    stream.set_epoch(1)
    assert [b["captions"] for b in stream] != [b["captions"] for b in batches]


def test_posterior_sampling_centres_on_the_cached_mean(cache) -> None:
    config = StreamConfig(resolution=RES, batch_size=1, crop="center", val_fraction=0.0, seed=0,
                          shuffle_buffer=1)  # fmt: skip
    mean_source = LatentSource(cache, sample_posterior=False)
    means = {b["keys"][0]: b["latents"] for b in TrainStream(mean_source, config)}
    sampled = {b["keys"][0]: b["latents"] for b in TrainStream(LatentSource(cache), config)}
    key = next(iter(means))
    assert not torch.equal(means[key], sampled[key])
    assert (means[key] - sampled[key]).abs().max() < 1.0


def test_a_training_step_runs_on_cached_batches(cache, tiny) -> None:
    module = DiffusionModule(tiny, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    config = StreamConfig(resolution=RES, batch_size=2, crop="center", val_fraction=0.0)
    stream = TrainStream(LatentSource(cache), config, tokenizer=tiny.tokenizer)
    batch = next(iter(stream))
    module.log = lambda *a, **k: None
    module.optimizers = lambda: torch.optim.SGD([torch.zeros(1)], lr=0.1)
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.unet.parameters())


def test_guards_name_the_cache_and_the_fix(cache, tiny) -> None:
    index = read_index(cache)
    with pytest.raises(LatentCacheError, match="Random or jittered"):
        check_cache(index, resolution=RES, crop="random", flip_p=0.0)
    with pytest.raises(LatentCacheError, match="Random or jittered"):
        check_cache(index, resolution=RES, crop="ed1", flip_p=0.0)
    with pytest.raises(LatentCacheError, match="--resolution 128"):
        check_cache(index, resolution=128, crop="center", flip_p=0.0)
    other = build_tiny(seed=1).vae
    with pytest.raises(LatentCacheError, match="not the VAE"):
        check_cache(index, resolution=RES, crop="center", flip_p=0.0, vae=other)
    check_cache(index, resolution=RES, crop="center", flip_p=0.5, vae=tiny.vae)
    with pytest.raises(LatentCacheError, match="cannot be cached"):
        cached_crop((64, 64), RES, "random")
    with pytest.raises(LatentCacheError, match="ymn-cache-latents"):
        read_index(cache.parent / "nowhere")


def test_no_flip_cache_refuses_flips_and_ed1_crop_is_the_unjittered_edge(shards, tiny) -> None:
    out = shards.parent / "cache-ed1"
    cache_latents(str(shards), out, tiny.vae, resolution=RES, crop="ed1", progress=False)
    with pytest.raises(LatentCacheError, match="--flip"):
        TrainStream(LatentSource(out), StreamConfig(resolution=RES, batch_size=2, crop="ed1",
                                                    flip_p=0.5))  # fmt: skip
    _, plan = cached_crop((100, 50), RES, "ed1")
    assert plan.box[:2] == (0, 0)


def test_datamodule_and_cli(shards, cache, tiny, monkeypatch) -> None:
    dm = LatentDataModule(str(shards), resolution=RES, batch_size=2, latents=str(cache),
                          val_fraction=0.3, flip_p=0.5, tokenizer=tiny.tokenizer)  # fmt: skip
    dm.setup("fit")
    train = list(dm.train_dataloader())
    val = list(dm.val_dataloader())
    assert train and val and all(b["input_ids"].shape[1] == 77 for b in train + val)
    assert not {k for b in val for k in b["keys"]} & {k for b in train for k in b["keys"]}
    assert all(not m["flipped"] for b in val for m in b["meta"])
    monkeypatch.setattr("ymn.model.components.load_components", lambda *a, **k: tiny)
    out = shards.parent / "cli"
    assert main([str(shards), str(out), "--resolution", str(RES)]) == 0
    assert read_index(out)["vae"] == read_index(cache)["vae"]


def test_datamodule_builds_the_cache_with_the_model_vae_and_refuses_another(
    shards, cache, tiny
) -> None:
    from types import SimpleNamespace

    def with_vae(vae) -> LatentDataModule:
        dm = LatentDataModule(str(shards), resolution=RES, batch_size=2, val_fraction=0.3,
                              latents=str(shards.parent / "built"))  # fmt: skip
        dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(vae=vae))
        return dm

    dm = with_vae(tiny.vae)
    dm.prepare_data()
    assert read_index(dm.latents)["vae"] == read_index(cache)["vae"]
    dm.setup("fit")
    assert (
        dm.preflight is None and dm.manifest["categories"] == read_index(dm.latents)["categories"]
    )
    with pytest.raises(LatentCacheError, match="not the VAE"):
        with_vae(build_tiny(seed=1).vae).setup("fit")


def test_the_same_vae_loaded_from_another_folder_serves_the_cache(cache, tiny, tmp_path) -> None:
    """A run's export (or another checkout) holds the same VAE under another path: the
    fingerprint reads weights and public config, not where the VAE was loaded from."""
    from diffusers import AutoencoderKL

    tiny.vae.save_pretrained(tmp_path / "a")
    tiny.vae.save_pretrained(tmp_path / "b")
    first, second = (AutoencoderKL.from_pretrained(tmp_path / n) for n in "ab")
    assert first.config._name_or_path != second.config._name_or_path
    assert vae_fingerprint(first) == vae_fingerprint(second) == read_index(cache)["vae"]
    with torch.no_grad():
        second.decoder.conv_out.bias.add_(1e-3)
    assert vae_fingerprint(second) != vae_fingerprint(first)
