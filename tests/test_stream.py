"""The weighted bucketed stream: draw plans, splits, batches, val split, bad input."""

from __future__ import annotations

import io
import json
import math
import pickle
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from ymn.data.captions import CaptionConfig, face_grid_tokens
from ymn.data.decode import (
    Sample,
    ShardSetupError,
    SkipCounter,
    is_val_key,
    iter_tar,
    resolve_shards,
    to_tensor,
)
from ymn.data.pack import pack_folder
from ymn.data.pixels import PixelSource
from ymn.data.sample_source import StreamConfig
from ymn.data.stream import (
    TrainStream,
    ValidationDataset,
    iter_draws,
    keep_batch,
    resume_position,
)
from ymn.data.tokenizer import (
    WordTokenCache,
    _word_cache,
    cacheable_caption,
    load_clip_tokenizer,
    tokenize,
)

SIZES = [(64, 64), (64, 40), (40, 64), (80, 40)]
RED = (255, 0, 0)


def face_meta(size: tuple[int, int], j: int) -> dict:
    """One face box (fractions), placed differently per image index j."""
    w, h = size
    left, top = (j * 7) % (w - 16), (j * 5) % (h - 16)
    box = [left / w, top / h, (left + 14) / w, (top + 14) / h]
    return {
        "n_faces": 1,
        "facepos": [box],
        "fh_ratio": 14 / h,
        "cropped": False,
        "characters": ["AobaKokona"],
        "general": "aniscreen",
        "tags": ["brown_hair", "1girl"],
        "n_people": 1,
    }


def make_tree(root: Path, folders: dict[str, int], multiply: dict[str, float] | None = None):
    """Tiny PNGs (grey, a red square where the face box is) with Jan-2023 json sidecars."""
    for folder, n in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            size = SIZES[j % len(SIZES)]
            meta = face_meta(size, j)
            image = Image.new("RGB", size, (90, 90, 90))
            box = [round(v * s) for v, s in zip(meta["facepos"][0], size * 2, strict=True)]
            ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=RED)
            image.save(root / folder / f"{j:04d}.png")
            (root / folder / f"{j:04d}.json").write_text(json.dumps(meta))
        if multiply and folder in multiply:
            (root / folder / "multiply.txt").write_text(str(multiply[folder]))
    return root


def packed(tmp_path: Path, folders, multiply=None, **kw) -> Path:
    out = tmp_path / "shards"
    pack_folder(make_tree(tmp_path / "root", folders, multiply), out, progress=False, **kw)
    return out


def stream(out: Path, **kw) -> TrainStream:
    shards, manifest = resolve_shards(str(out))
    args = dict(resolution=64, batch_size=2, shuffle_buffer=16, val_fraction=0.0, seed=3)
    args.update(kw)
    loader = {k: args.pop(k) for k in ("tokenizer", "rank", "world_size") if k in args}
    return TrainStream(PixelSource(shards, manifest), StreamConfig(**args), **loader)


def all_keys(batches) -> Counter:
    return Counter(k for b in batches for k in b["keys"])


def test_ed1_vs_ed2_epoch_sizes(tmp_path: Path) -> None:
    mult = {"a": 1.5, "b": 0.5, "c": 2.0}
    out = packed(tmp_path, {"a": 5, "b": 3, "c": 4}, mult, shard_size=4)
    ed1, ed2 = stream(out, multiply_mode="ed1"), stream(out, multiply_mode="ed2")
    n = {"a": 5, "b": 3, "c": 4}
    assert ed1.epoch_size() == sum(n[c] * int(mult[c]) for c in n)  # 0.5 -> folder dropped
    assert ed2.epoch_size() == math.floor(sum(n[c] * mult[c] for c in n))
    for s in (ed1, ed2):
        for epoch in range(3):
            draws = list(iter_draws(s.source, s.config, epoch=epoch))
            assert sum(c for _, c in draws) == s.epoch_size(epoch)
            assert len({smp.key for smp, _ in draws}) == len(draws)
    ed1_draws = iter_draws(ed1.source, replace(ed1.config, seed=0))
    assert "b" not in {smp.category for smp, _ in ed1_draws}


def test_category_frequencies_follow_probabilities(tmp_path: Path) -> None:
    folders = {"shots/1": 3, "shots/2": 7, "shots/3": 2, "fanart": 5, "reg/a": 9, "reg/b": 4}
    csv = tmp_path / "w.csv"
    csv.write_text("shots,3\nfanart,1\nreg,2\n1,2\n3,0.5\nb,1.5\n")
    make_tree(tmp_path / "root", folders)
    out = tmp_path / "out"
    manifest = pack_folder(
        tmp_path / "root",
        out,
        weights=csv,
        multiply_from="weights",
        min_multiply=2000,
        max_multiply=1e9,
        rounding="2",
        shard_size=7,
        progress=False,
    )
    s = stream(out, multiply_mode="ed2")
    counts: Counter = Counter()
    for epoch in range(2):
        for sample, copies in iter_draws(s.source, replace(s.config, seed=1), epoch=epoch):
            counts[sample.category] += copies
    total = sum(counts.values())
    assert total >= 100_000
    for category, entry in manifest["categories"].items():
        assert abs(counts[category] / total - entry["prob"]) < 0.01, category
    ed1 = Counter()
    for sample, copies in iter_draws(s.source, replace(s.config, multiply_mode="ed1", seed=0)):
        ed1[sample.category] += copies
    assert ed1 == {c: e["n_images"] * int(e["multiply"]) for c, e in manifest["categories"].items()}


def test_batches_have_one_bucket_and_are_deterministic(tmp_path: Path) -> None:
    out = packed(tmp_path, {"a": 9, "b": 7}, {"a": 3}, shard_size=5)
    s = stream(out, batch_size=3, crop="random", flip_p=0.5)
    first = list(s)
    assert first and sum(len(b["keys"]) for b in first) <= s.epoch_size()
    for batch in first:
        shape = batch["pixel_values"].shape
        assert shape[0] == 3 == len(batch["captions"]) == len(batch["meta"])
        assert (shape[3], shape[2]) in s.buckets
        assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    again = list(s)
    assert [b["keys"] for b in again] == [b["keys"] for b in first]
    assert [b["captions"] for b in again] == [b["captions"] for b in first]
    assert all(
        (a["pixel_values"] == b["pixel_values"]).all() for a, b in zip(first, again, strict=True)
    )
    s.set_epoch(1)
    assert [b["keys"] for b in s] != [b["keys"] for b in first]
    other_seed = stream(out, batch_size=3, seed=99)
    assert [b["keys"] for b in other_seed] != [b["keys"] for b in first]


def keys_by_slot(batches) -> dict[int, list[str]]:
    by_slot: dict[int, list[str]] = {}
    for batch in batches:
        by_slot.setdefault(batch["slot"], []).extend(batch["keys"])
    return by_slot


@pytest.mark.parametrize("shard_size", [100, 3])  # one shard (split by sample) / many shards
def test_workers_and_ranks_split_without_repeats(tmp_path: Path, shard_size: int) -> None:
    """One slot draws every sample once; with two, each slot draws its own share only and
    stops at the agreed batches_per_slot (13 samples, batch 1: 6 each)."""
    out = packed(tmp_path, {"a": 7, "b": 6}, shard_size=shard_size)
    s = stream(out, batch_size=1)
    expected = Counter({smp.key: n for smp, n in iter_draws(s.source, s.config)})
    assert set(expected.values()) == {1} and len(expected) == 13
    assert all_keys(DataLoader(s, batch_size=None, num_workers=0)) == expected
    workers = keys_by_slot(DataLoader(s, batch_size=None, num_workers=2))
    ranks = {r: list(all_keys(stream(out, batch_size=1, rank=r, world_size=2))) for r in (0, 1)}
    for split in (workers, ranks):
        assert sorted(split) == [0, 1] and [len(keys) for keys in split.values()] == [6, 6]
        assert len(set(split[0]) | set(split[1])) == 12 and set(split[0]) <= set(expected)


def test_a_slot_that_runs_dry_refills_from_its_own_share(tmp_path: Path) -> None:
    """3 shards over 2 ranks: rank 1 holds a third of the data, yet yields as many batches as
    rank 0 by redrawing its own samples; no sample crosses ranks."""
    out = packed(tmp_path, {"a": 9}, shard_size=3)
    ranks = [list(stream(out, batch_size=2, rank=r, world_size=2)) for r in (0, 1)]
    s = stream(out, batch_size=2)
    assert len(ranks[0]) == len(ranks[1]) == s.batches_per_slot(2) == 2
    keys = [all_keys(batches) for batches in ranks]
    assert not set(keys[0]) & set(keys[1])
    assert sum(keys[1].values()) == 4 and len(keys[1]) <= 3  # 4 draws from its 3 samples


def test_a_slot_without_samples_names_the_settings(tmp_path: Path) -> None:
    out = packed(tmp_path, {"a": 1})
    with pytest.raises(ValueError, match="no training sample reaches slot 1 of 2.*num_workers"):
        list(stream(out, batch_size=1, rank=1, world_size=2))


@pytest.mark.parametrize("n_workers", [1, 2, 3, 4])
def test_resume_position_continues_the_round_robin(n_workers: int) -> None:
    """A new DataLoader iterator starts at worker 0; the rotated roles replay the rest of the
    uninterrupted round-robin for a resume after any number of batches."""
    per_worker = 3
    order = [(w, i) for i in range(per_worker) for w in range(n_workers)]  # (logical, index)
    for consumed in range(len(order) + 1):
        resumed = []
        roles = [resume_position(w, n_workers, consumed) for w in range(n_workers)]
        for i in range(per_worker):
            resumed += [(logical, skip + i) for logical, skip in roles if skip + i < per_worker]
        assert resumed == order[consumed:], consumed


def test_val_keys_never_in_training(tmp_path: Path) -> None:
    out = packed(tmp_path, {"a": 12, "b": 12}, {"a": 2})
    s = stream(out, batch_size=1, val_fraction=0.3)
    train = set(all_keys(s))
    val = ValidationDataset(s.source, replace(s.config, batch_size=4))
    val_batches = list(val)
    val_keys = {k for b in val_batches for k in b["keys"]}
    assert val_keys and train and not train & val_keys
    assert all(is_val_key(k, 0.3) for k in val_keys)
    planned = {smp.key for smp, _ in iter_draws(s.source, s.config)}
    assert train <= planned and len(val_keys) + len(planned) == 24  # the epoch may stop early
    assert [b["captions"] for b in val] == [b["captions"] for b in val_batches]
    assert all(" " != c for b in val_batches for c in b["captions"])


def test_face_boxes_follow_crop_and_flip(tmp_path: Path) -> None:
    out = packed(tmp_path, {"a": 16})
    cfg = CaptionConfig(dropout=0.0)
    s = stream(out, batch_size=1, crop="random", flip_p=0.5, caption=cfg)
    flips = 0
    for batch in s:
        meta, pixels = batch["meta"][0], batch["pixel_values"][0]
        flips += meta["flipped"]
        assert batch["captions"][0].startswith(f"{meta['n_people']}person")
        if meta["n_faces"] == 0:
            continue
        assert face_grid_tokens(meta["facepos"], cfg.grid) in batch["captions"][0]
        h, w = pixels.shape[1:]
        left, top, right, bottom = meta["facepos"][0]
        x, y = int((left + right) / 2 * w), int((top + bottom) / 2 * h)
        red, green = pixels[0, y, x].item(), pixels[1, y, x].item()
        assert red > 0.8 and green < -0.8, (batch["keys"][0], meta)
    assert 0 < flips < 16


def _write_shard(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)


def test_bad_input_is_skipped_and_counted(tmp_path: Path) -> None:
    out = packed(tmp_path, {"a": 6, "b": 5}, shard_size=4)
    good = stream(out, batch_size=1)
    good_keys = all_keys(good)
    meta = {**face_meta((64, 64), 0), "category": "a", "category_index": 0, "size": [64, 64]}
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, format="PNG")
    js = json.dumps(meta).encode()
    _write_shard(out / "bad.tar", [
        {"__key__": "corrupt", "jpg": b"\xff\xd8\xffnot a jpeg", "json": js},
        {"__key__": "badjson", "png": png.getvalue(), "json": b"{oops"},
    ])  # fmt: skip
    _write_shard(out / "trunc.tar", [
        {"__key__": f"t{i}", "png": png.getvalue() + bytes(4000), "json": js} for i in range(3)
    ])  # fmt: skip
    data = (out / "trunc.tar").read_bytes()
    (out / "trunc.tar").write_bytes(data[: len(data) // 2])
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("bad.tar", "trunc.tar", "gone.tar"):
        manifest["shards"].append({"name": name, "n_samples": 2, "sha256": ""})
    manifest["categories"]["a"]["n_images"] += 6  # planned, so the epoch reads every shard
    (out / "manifest.json").write_text(json.dumps(manifest))
    s = stream(out, batch_size=1)
    keys = all_keys(s)
    assert set(good_keys) <= set(keys) and "corrupt" not in keys and "badjson" not in keys
    assert s.skipped["bad_image"] == 1 and s.skipped["bad_json"] == 1
    assert s.skipped["truncated_shard"] == 1 and s.skipped["missing_shard"] == 1
    last = list(stream(out, batch_size=1))[-1]["skipped"]
    assert sum(last.values()) <= 4  # cumulative per worker, reported with each batch


def test_pattern_matching_nothing_names_it(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nowhere" / "shard-{000000..000003}.tar")
    with pytest.raises(ShardSetupError, match="ymn-pack") as err:
        resolve_shards(pattern)
    assert pattern in str(err.value)
    with pytest.raises(ShardSetupError, match="manifest"):
        empty = tmp_path / "empty"
        empty.mkdir()
        resolve_shards(str(empty))
    out = packed(tmp_path, {"a": 3})
    shards, _ = resolve_shards(str(out / "shard-{000000..000000}.tar"))
    assert shards == [str(out / "shard-000000.tar")]
    shutil.rmtree(out)
    assert SkipCounter() == {}


def same_batches(a: TrainStream, b: TrainStream) -> bool:
    pairs = list(zip(list(a), list(b), strict=True))
    return bool(pairs) and all(
        x["keys"] == y["keys"] and x["captions"] == y["captions"]
        and torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in pairs
    )  # fmt: skip


def url_stream(pattern: str, **kw) -> TrainStream:
    shards, manifest = resolve_shards(pattern)
    args = {**dict(resolution=64, batch_size=2, shuffle_buffer=16, val_fraction=0.0, seed=3), **kw}
    return TrainStream(PixelSource(shards, manifest), StreamConfig(**args))


def test_pipe_shards_stream_what_local_shards_stream(tmp_path: Path) -> None:
    """`pipe:cat …` with a brace pattern (manifest read beside it by the same command): the
    same batches as the folder; a command that fails counts as a missing shard."""
    out = packed(tmp_path, {"a": 7, "b": 6}, {"a": 2}, shard_size=4)
    pattern = f"pipe:cat {out}/shard-{{000000..000003}}.tar"
    assert resolve_shards(pattern)[0][1] == f"pipe:cat {out}/shard-000001.tar"
    assert same_batches(url_stream(pattern, flip_p=0.5), stream(out, flip_p=0.5))
    counter = SkipCounter()
    assert not list(iter_tar(f"pipe:cat {out}/shard-000009.tar", counter))
    assert counter == {"missing_shard": 1}
    with pytest.raises(ShardSetupError, match="no manifest at pipe:cat"):
        resolve_shards(f"pipe:cat {tmp_path}/nowhere/shard-{{000000..000001}}.tar")


def test_http_shards_stream_what_local_shards_stream(tmp_path: Path) -> None:
    """Shards and manifest served over HTTP on 127.0.0.1: the same batches as the folder, a
    shard cut short counted as truncated and the epoch goes on."""
    import functools
    import http.server
    import threading

    out = packed(tmp_path, {"a": 7, "b": 6}, {"a": 2}, shard_size=4)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(out))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert same_batches(url_stream(f"{base}/shard-{{000000..000003}}.tar"), stream(out))
        data = (out / "shard-000001.tar").read_bytes()
        (out / "shard-000001.tar").write_bytes(data[: len(data) // 2])
        cut = url_stream(f"{base}/shard-{{000000..000003}}.tar", batch_size=1)
        assert all_keys(cut) and cut.skipped["truncated_shard"] == 1
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Fast paths give exactly what the plain ones give
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    return load_clip_tokenizer()


def plain_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids  # fmt: skip


TAGS = ["1person", "3people", "AobaKokona", "fhmd fvmd", "brown_hair", "(smile:1.2)", "it's",
        "x2", "long  hair", "UPPER", ",", "a.b-c", "<lora>", "20%", "'ll", "e\u00e9", "\ttab",
        "<|endoftext|>", "\u3042\u3044", "ß"]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(TAGS) | st.text(max_size=8), max_size=40), min_size=1,
                max_size=4))  # fmt: skip
def test_tokenize_equals_the_tokenizer_call(clip, tag_lists: list[list[str]]) -> None:
    captions = [", ".join(tags) for tags in tag_lists]
    assert torch.equal(tokenize(clip, captions), plain_ids(clip, captions))


def test_word_cache_is_used_for_clip_only(clip) -> None:
    cache = _word_cache(clip)
    assert isinstance(cache, WordTokenCache) and _word_cache(clip) is cache
    long = ["tag " * 100, "AobaKokona, 1girl", " ", ""]
    assert all(map(cacheable_caption, long))
    assert torch.equal(cache.ids(long), plain_ids(clip, long))
    assert cache.ids(long).shape == (4, 77) and {"tag", "AobaKokona,"} <= set(cache.words)
    assert not cacheable_caption("caf\u00e9") and not cacheable_caption("a\tb")
    assert not cacheable_caption("<|endoftext|>")
    clip_twin = load_clip_tokenizer()
    clip_twin.add_tokens(["fh ml"])  # a token with a space: words are no longer independent
    assert _word_cache(clip_twin) is None
    captions = ["fh ml, fh  ml", "1person"]
    assert torch.equal(tokenize(clip_twin, captions), plain_ids(clip_twin, captions))


def test_stream_input_ids_are_the_tokenizer_call(tmp_path: Path, clip) -> None:
    out = packed(tmp_path, {"a": 6, "b": 5}, {"a": 2})
    batches = list(stream(out, batch_size=2, tokenizer=clip))
    assert batches
    for batch in batches:
        assert torch.equal(batch["input_ids"], plain_ids(clip, batch["captions"]))


def test_keep_batch_loader_equals_the_default_one(tmp_path: Path, clip) -> None:
    out = packed(tmp_path, {"a": 6, "b": 5}, {"a": 2})
    s = stream(out, batch_size=2, tokenizer=clip, flip_p=0.5)
    plain = list(DataLoader(s, batch_size=None))
    kept = list(DataLoader(s, batch_size=None, collate_fn=keep_batch))
    assert plain and len(plain) == len(kept)
    for a, b in zip(plain, kept, strict=True):
        assert a.keys() == b.keys()
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert (a["captions"], a["keys"], a["meta"]) == (b["captions"], b["keys"], b["meta"])


def test_worker_input_ids_arrive_as_plain_equal_tensors(tmp_path: Path, clip) -> None:
    out = packed(tmp_path, {"a": 6, "b": 5}, {"a": 2}, shard_size=3)
    s = stream(out, batch_size=2, tokenizer=clip)
    batches = list(DataLoader(s, batch_size=None, num_workers=2, collate_fn=keep_batch))
    assert batches  # per-worker bucket remainders are dropped, so fewer than with 0 workers
    for batch in batches:
        ids = batch["input_ids"]
        assert type(ids) is torch.Tensor and ids.dtype == torch.long and ids.shape[1] == 77
        assert torch.equal(ids, plain_ids(clip, batch["captions"]))
        assert type(ids[:, :3] + 1) is torch.Tensor


def test_by_value_ids_pickle_as_bytes_and_come_back_plain() -> None:
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers the shared-memory reducers)

    from ymn.data.stream import _ByValue

    ids = torch.arange(2 * 77, dtype=torch.long).view(2, 77)
    shared = ForkingPickler.dumps(ids.clone())
    by_value = ForkingPickler.dumps(ids.as_subclass(_ByValue))
    assert len(by_value) > ids.numel() * 8 > len(shared)  # bytes inline vs a segment handle
    back = pickle.loads(by_value)
    assert type(back) is torch.Tensor and back.dtype == ids.dtype and torch.equal(back, ids)


def reference_tensor(image: Image.Image) -> torch.Tensor:
    """The earlier to_tensor: RGB conversion, uint8 copy, then float in torch."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16"])
def test_decode_and_to_tensor_match_the_reference(mode: str) -> None:
    rgb = Image.effect_noise((23, 17), 80).convert("RGB")
    rgb.putpixel((0, 0), (255, 0, 7))
    image = rgb.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
    sample = Sample("k", {}, buffer.getvalue(), "test:k")
    decoded = sample.image()
    with Image.open(io.BytesIO(buffer.getvalue())) as im:
        expected = im.convert("RGB")
    assert decoded.mode == "RGB" and decoded.tobytes() == expected.tobytes()
    ours, ref = to_tensor(decoded), reference_tensor(expected)
    assert ours.dtype == ref.dtype and ours.shape == (3, 17, 23)
    assert torch.equal(ours, ref) and ours.stride() == ref.stride()
    assert torch.equal(to_tensor(image), reference_tensor(image))


def test_the_streams_category_mix_is_steady_when_shards_are_packed_in_a_permutation(tmp_path):
    """Shards are read in turn and mixed only in the shuffle buffer: folder-by-folder shards
    give runs of one category (what made the toy fine-tune's data change every ~300 steps)."""

    def share_of_a_per_window(**pack) -> list[float]:
        out = packed(tmp_path / str(pack), {"a": 40, "b": 40}, shard_size=20, **pack)
        keys = [k for b in stream(out, batch_size=4, shuffle_buffer=8) for k in b["keys"]]
        assert len(keys) == 80
        return [sum(k.startswith("a_") for k in keys[i : i + 20]) / 20 for i in range(0, 80, 20)]

    assert all(0.3 <= share <= 0.7 for share in share_of_a_per_window())
    by_folder = share_of_a_per_window(shuffle_seed=None)
    assert min(by_folder) <= 0.2 and max(by_folder) >= 0.8


def test_a_heavily_multiplied_images_copies_are_spread_over_the_epoch(tmp_path: Path) -> None:
    """ED1 shuffles its repeated list whole; the stream reads each shard once per copy round,
    so an image with 20 copies is not shown 20 times within a buffer's span."""
    out = packed(tmp_path, {"a": 40, "b": 2}, {"a": 1, "b": 20}, shard_size=10)
    keys = [k for batch in stream(out, batch_size=2, shuffle_buffer=8) for k in batch["keys"]]
    assert len(keys) == 80 and sum(k.startswith("b_") for k in keys) == 40
    for image in {k for k in keys if k.startswith("b_")}:
        where = [i for i, k in enumerate(keys) if k == image]
        assert len(where) == 20
        assert 7 <= sum(i < 40 for i in where) <= 13  # two copy rounds, half an epoch each
        assert where[-1] - where[0] >= 50  # emitted at one read, they spanned ~28 draws
