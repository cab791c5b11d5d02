"""Setup-time data checks (ED1 drops, caption lengths, shard sizes) and `ymn-pack --verify`."""

from __future__ import annotations

import json
import logging
import random
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from ymn.data.datamodule import YmnDataModule
from ymn.data.decode import resolve_shards
from ymn.data.pack import main as pack_main
from ymn.data.pack import pack_folder
from ymn.data.preflight import check_shards, sample_draws, verify_pack
from ymn.run_record import RecordDataManifest

LONG = " ".join(["word"] * 100)  # 100 tokens + start + end = 102: CLIP drops 25
FOLDERS = {"long": (4, LONG, "3"), "short": (6, "a short caption", None), "half": (3, "x", "0.5")}


def make_tree(root: Path) -> Path:
    """Caption-only PNGs (.txt captions) of random pixels, so a flipped byte breaks the PNG."""
    rng = random.Random(0)
    for folder, (n, caption, multiply) in FOLDERS.items():
        (root / folder).mkdir(parents=True)
        for j in range(n):
            pixels = bytes(rng.randrange(256) for _ in range(24 * 16 * 3))
            Image.frombytes("RGB", (24, 16), pixels).save(root / folder / f"{j}.png")
            (root / folder / f"{j}.txt").write_text(caption)
        if multiply is not None:
            (root / folder / "multiply.txt").write_text(multiply)
    return root


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    pack_folder(make_tree(tmp_path / "root"), out, shard_size=4, progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return pytest.importorskip("ymn.data.tokenizer").load_clip_tokenizer()


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_first_image(path: Path) -> str:
    """Flip bytes inside the first PNG of a shard (same size); return that sample's key."""
    with tarfile.open(path) as tar:
        member = next(m for m in tar if m.name.endswith(".png"))
    data = bytearray(path.read_bytes())
    middle = member.offset_data + member.size // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))
    return member.name.split(".", 1)[0]


def setup_module_on(shards: Path, tokenizer) -> YmnDataModule:
    dm = YmnDataModule(
        str(shards), resolution=64, batch_size=2, val_fraction=0.0, seed=0, tokenizer=tokenizer
    )
    dm.setup("fit")
    return dm


def test_manifest_records_size_samples_and_sha256(shards: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    for entry in manifest["shards"]:
        assert entry["size"] == (shards / entry["name"]).stat().st_size
        assert entry["n_samples"] >= 1 and len(entry["sha256"]) == 64
    assert check_shards(*resolve_shards(str(shards)), sha256=True) == []
    assert verify_pack(shards) == []


def test_setup_reports_drops_truncated_captions_and_damaged_shards(
    shards: Path, tokenizer, caplog
) -> None:
    names = sorted(p.name for p in shards.glob("shard-*.tar"))
    truncate_half(shards / names[0])
    corrupt_first_image(shards / names[-1])
    with caplog.at_level(logging.WARNING, logger="ymn.data.preflight"):
        dm = setup_module_on(shards, tokenizer)
    warnings = [r.getMessage() for r in caplog.records]
    drops = [w for w in warnings if "never train" in w]
    assert len(drops) == 1 and "'half' (3 images, multiply 0.5)" in drops[0]
    assert any(names[0] in w and "the manifest says" in w for w in warnings)
    assert any(names[-1] in w and "sha256" in w for w in warnings)  # small: hashed at setup
    assert all("ymn-pack --verify" in w for w in warnings if "shard" in w.split()[0])
    report = dm.preflight
    assert report.dropped == {"half": 3}
    assert report.metrics()["data/dropped_images"] == 3.0
    assert report.metrics()["data/bad_shards"] == 2.0
    # the truncated shard hides some samples, so only the sampled share is checked here
    assert report.captions is not None and report.captions.mean_tokens_lost == 25.0


def test_caption_share_weights_each_sample_by_its_copies(shards: Path, tokenizer) -> None:
    stats = setup_module_on(shards, tokenizer).preflight.captions
    # long: 4 images x 3 copies over 102 tokens; short: 6 x 1 fit; half: dropped, not drawn
    assert stats.truncated_share == pytest.approx(12 / 18)
    assert (stats.mean_tokens_lost, stats.max_tokens, stats.n_samples) == (25.0, 102, 10)


def test_verify_lists_bad_shards_and_samples(shards: Path, capsys) -> None:
    names = sorted(p.name for p in shards.glob("shard-*.tar"))
    assert pack_main(["--verify", str(shards)]) == 0
    assert "intact" in capsys.readouterr().out
    truncate_half(shards / names[0])
    key = corrupt_first_image(shards / names[-1])
    problems = verify_pack(shards)
    assert any(p.startswith(str(shards / names[0])) and "bytes" in p for p in problems)
    assert any(f"{names[-1]}:{key}: image does not decode" in p for p in problems)
    assert not any(names[1] in p for p in problems)  # the intact shard is not listed
    assert pack_main(["--verify", str(shards)]) == 1
    out = capsys.readouterr().out
    assert f"{names[-1]}:{key}" in out and "problem(s)" in out
    assert pack_main(["--verify", str(shards / "nothing")]) == 1


def test_pack_cli_warns_about_ed1_drops(tmp_path: Path, capsys) -> None:
    root = make_tree(tmp_path / "root")
    assert pack_main([str(root), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "multiply_mode=ed1" in err and "'half' (3 images, multiply 0.5)" in err


def test_run_manifest_records_the_checks_and_logs_them(
    shards: Path, tokenizer, tmp_path: Path
) -> None:
    dm = setup_module_on(shards, tokenizer)
    logged: list[tuple[dict, int]] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step)))
    trainer = SimpleNamespace(datamodule=dm, is_global_zero=True, loggers=[logger], global_step=0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RecordDataManifest(run_dir).on_fit_start(trainer, None)
    recorded = json.loads((run_dir / "data_manifest.json").read_text())
    assert (
        recorded["categories"] == json.loads((shards / "manifest.json").read_text())["categories"]
    )
    assert recorded["preflight"]["dropped"] == {"half": 3}
    assert recorded["preflight"]["captions"]["truncated_share"] == pytest.approx(12 / 18)
    assert logged == [(dm.preflight.metrics(), 0)]
    assert logged[0][0]["data/captions_truncated_share"] == pytest.approx(12 / 18)


def test_cheap_check_finds_truncation_without_hashing(shards: Path) -> None:
    paths, manifest = resolve_shards(str(shards))
    truncate_half(Path(paths[1]))
    corrupt_first_image(Path(paths[2]))  # same size: only sha256 or --verify can tell
    problems = check_shards(paths, manifest, sha256=False)
    assert len(problems) == 1 and problems[0].startswith(f"{paths[1]}: ")
    assert "bytes, the manifest says" in problems[0] and "samples, the manifest says" in problems[0]


def test_caption_sample_is_every_kth_packed_sample(shards: Path, tokenizer) -> None:
    stream = setup_module_on(shards, tokenizer).train_stream
    packed = [meta["source"] for _, meta in _all_metadata(stream.shards)]
    sampled = [meta["source"] for _, meta, _ in sample_draws(stream, budget=5)]  # 13 -> k=3
    assert sampled == [s for s in packed[::3] if not s.startswith("half/")]
    copies = {meta["category"]: n for _, meta, n in sample_draws(stream, budget=5)}
    assert copies == {"long": 3, "short": 1}  # ED1 copies of each sampled draw


def _all_metadata(paths):
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    yield member.name, json.loads(tar.extractfile(member).read())
