"""ymn-pack: shards + manifest from a small ASP-style tree."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from ymn.data.pack import PackError, main, pack_folder, sample_key


def _meta(n: int) -> dict:
    faces = [[0.1 + 0.2 * i, 0.2, 0.25 + 0.2 * i, 0.4] for i in range(n)]
    return {
        "n_faces": n,
        "facepos": faces,
        "fh_ratio": 0.2,
        "cropped": False,
        "characters": ["AobaKokona"] * n,
        "general": "aniscreen",
        "tags": ["brown_hair"],
        "n_people": n,
    }


def _image(path: Path, size: tuple[int, int], colour: int) -> None:
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    Image.new("RGB", size, (colour, 40, 200 - colour)).save(path, format=fmt)


def make_tree(root: Path) -> Path:
    """screenshots/{1_character,2_characters} + fanart (with multiply.txt), plus two bad files."""
    folders = {"screenshots/1_character": 4, "screenshots/2_characters": 3, "fanart": 2}
    for i, (folder, n) in enumerate(folders.items()):
        (root / folder).mkdir(parents=True)
        for j in range(n):
            ext = ".jpg" if folder == "fanart" else ".png"
            _image(root / folder / f"img {j}.v2{ext}", (40 + 8 * j, 32), 30 * i + j)
            (root / folder / f"img {j}.v2.json").write_text(json.dumps(_meta(1 + i)))
    (root / "fanart" / "multiply.txt").write_text("3.5")
    (root / "screenshots/1_character/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    _image(root / "screenshots/2_characters/badjson.png", (20, 20), 9)
    (root / "screenshots/2_characters/badjson.json").write_text("{not json")
    return root


def _weights(tmp_path: Path) -> Path:
    csv = tmp_path / "weights.csv"
    csv.write_text("screenshots,3\nfanart,1\n2_characters,2\n")
    return csv


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "root")


def _tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
            assert member.mtime == tar.getmembers()[0].mtime
    return samples


def test_manifest_counts_checksums_and_skips(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    manifest = pack_folder(tree, out, weights=_weights(tmp_path), shard_size=4, progress=False)
    cats = manifest["categories"]
    assert {c: v["n_images"] for c, v in cats.items()} == {
        "fanart": 2,
        "screenshots/1_character": 4,
        "screenshots/2_characters": 3,
    }
    assert cats["fanart"]["multiply"] == 3.5  # multiply.txt wins over WeightTree (auto)
    assert sum(v["prob"] for v in cats.values()) == pytest.approx(1.0)
    # screenshots weight 3 vs fanart 1
    assert cats["fanart"]["prob"] == pytest.approx(0.25)
    assert manifest["total_images"] == 9
    assert manifest["sum_multiply"] == pytest.approx(
        sum(v["n_images"] * v["multiply"] for v in cats.values())
    )
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {
        "screenshots/1_character/broken.png",
        "screenshots/2_characters/badjson.png",
    }
    assert "image" in reasons["screenshots/1_character/broken.png"]
    assert "metadata" in reasons["screenshots/2_characters/badjson.png"]
    assert [s["n_samples"] for s in manifest["shards"]] == [4, 4, 1]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    seen: dict[str, list[int]] = {}
    for shard in manifest["shards"]:
        path = out / shard["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        samples = _tar_samples(path)
        assert len(samples) == shard["n_samples"]
        for key, parts in samples.items():
            meta = json.loads(parts["json"])
            assert key == sample_key(meta["source"]) and "." not in key
            ext = "jpg" if meta["source"].endswith(".jpg") else "png"
            image = Image.open(io.BytesIO(parts[ext]))
            assert list(image.size) == meta["size"]
            assert meta["multiply"] == cats[meta["category"]]["multiply"]
            seen.setdefault(meta["category"], []).append(meta["category_index"])
    assert {c: sorted(v) for c, v in seen.items()} == {
        c: list(range(v["n_images"])) for c, v in cats.items()
    }


def test_rerun_is_byte_identical_and_worker_count_free(tree: Path, tmp_path: Path) -> None:
    def pack(out: Path, workers: int) -> dict[str, bytes]:
        pack_folder(tree, out, shard_size=3, workers=workers, force=True, progress=False)
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    first = pack(tmp_path / "a", 1)
    assert pack(tmp_path / "a", 1) == first
    assert pack(tmp_path / "b", 2) == first


def test_up_to_date_output_is_skipped(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pack_folder(tree, out, progress=False)
    shard = out / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes())  # new mtime; a re-pack would rewrite it anyway
    before = shard.stat().st_mtime_ns
    pack_folder(tree, out, progress=False)
    assert shard.stat().st_mtime_ns == before
    _image(tree / "fanart" / "new.jpg", (10, 10), 1)
    manifest = pack_folder(tree, out, progress=False)
    assert manifest["categories"]["fanart"]["n_images"] == 3


def test_max_side_downscales_only_large_images(tree: Path, tmp_path: Path) -> None:
    manifest = pack_folder(tree, tmp_path / "out", max_side=36, progress=False)
    sizes = []
    for shard in manifest["shards"]:
        for parts in _tar_samples(tmp_path / "out" / shard["name"]).values():
            sizes.append(tuple(json.loads(parts["json"])["size"]))
    assert max(max(s) for s in sizes) == 36
    assert (36, 29) in sizes and (36, 24) in sizes  # 40x32 -> 36x29 (rounded), 48x32 -> 36x24


def test_strict_names_the_bad_file(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(PackError, match="broken.png"):
        pack_folder(tree, tmp_path / "out", strict=True, progress=False)


def test_cli_prints_summary_with_skips(tree: Path, tmp_path: Path, capsys) -> None:
    assert main([str(tree), str(tmp_path / "out"), "--shard-size", "5"]) == 0
    text = capsys.readouterr().out
    assert "9 images" in text and "skipped 2" in text and "broken.png" in text
    assert main([str(tmp_path / "missing"), str(tmp_path / "out2")]) == 1


def _packed_categories(out: Path) -> list[str]:
    """The category of every packed sample, shard after shard, in packing order."""
    manifest = json.loads((out / "manifest.json").read_text())
    return [
        json.loads(sample["json"])["category"]
        for entry in manifest["shards"]
        for sample in _tar_samples(out / entry["name"]).values()
    ]


def test_shards_hold_the_trees_mix_unless_packed_in_folder_order(tree: Path, tmp_path: Path):
    """The stream reads shards in turn, so folder-by-folder shards serve one category at a time."""
    mixed, in_order = tmp_path / "mixed", tmp_path / "in_order"
    assert main([str(tree), str(mixed), "--shard-size", "4"]) == 0
    assert main([str(tree), str(in_order), "--shard-size", "4", "--folder-order"]) == 0
    by_folder = _packed_categories(in_order)
    assert by_folder == sorted(by_folder) and len(set(by_folder)) == 3
    permuted = _packed_categories(mixed)
    assert sorted(permuted) == by_folder and permuted != by_folder
    again = tmp_path / "again"
    pack_folder(tree, again, shard_size=4, progress=False)  # the CLI's default seed, 0
    for name in ("shard-000000.tar", "shard-000001.tar", "manifest.json"):
        assert (again / name).read_bytes() == (mixed / name).read_bytes()
    other = pack_folder(tree, tmp_path / "other", shard_size=4, progress=False, shuffle_seed=1)
    assert other["weights"]["shuffle_seed"] == 1
    assert _packed_categories(tmp_path / "other") != permuted
