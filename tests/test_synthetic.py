"""Synthetic dataset: determinism, ASP layout and metadata, face-grid and size coverage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ymn.data.synthetic import (
    CHARACTERS,
    generate_dataset,
    main,
    render_layout,
    render_scene,
    sample_scene_spec,
    scene_folder,
)
from ymn.data.synthetic_draw import SKIN, palette_colours

SIZE = 128


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _kind_of(rel: Path) -> str:
    top = rel.parts[0]
    return {"screenshots": "screenshot", "fanart": "fanart"}.get(top, top)


@pytest.fixture(scope="module")
def dataset(module_tmp) -> tuple[Path, dict]:
    out = module_tmp.mktemp("synth")
    return out, generate_dataset(out, n=60, seed=3, size=SIZE)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", n=12, seed=7)
    generate_dataset(tmp_path / "b", n=12, seed=7, workers=2)
    generate_dataset(tmp_path / "c", n=12, seed=8)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert len(a) == 2 * 12 + 1
    assert a == b
    pngs = lambda files: sorted(v for k, v in files.items() if k.endswith(".png"))  # noqa: E731
    assert pngs(a) != pngs(c)


def test_every_sidecar_matches_its_image_and_folder(dataset: tuple[Path, dict]) -> None:
    root, info = dataset
    jsons = sorted(root.rglob("ymnsynth_*.json"))
    assert len(jsons) == info["n"] == 60
    for path in jsons:
        meta = json.loads(path.read_text())
        rel = path.relative_to(root)
        assert path.with_suffix(".png").is_file(), rel
        n = meta["n_faces"]
        assert n == len(meta["facepos"]) == len(meta["characters"]), rel
        assert str(rel.parent) == scene_folder(_kind_of(rel), meta)
        heights = [b - t for _, t, _, b in meta["facepos"]]
        assert meta["fh_ratio"] == pytest.approx(max(heights, default=0.0))
        assert meta["cropped"] is False
        lefts = [(box[0] + box[2]) / 2 for box in meta["facepos"]]
        assert lefts == sorted(lefts), f"{rel}: faces not in left-to-right order"
        if rel.parts[0] == "hands":
            assert meta["n_people"] == 0 and n == 0 and "hands" in meta["tags"]
            continue
        assert meta["n_people"] == n and 1 <= n <= 5
        lb = int(rel.parts[-2].split("_")[-1].split("-")[0])
        assert lb / 100 <= meta["fh_ratio"] < lb / 100 + 0.25 or lb == 75
        if rel.parts[0] == "regularization":
            assert rel.parts[1] == f"{n}_people"
            assert set(meta["characters"]) == {"unknown"}
        else:
            assert rel.parts[1] == (f"{n}_characters" if n > 1 else "1_character")
            assert rel.parts[2] == "+".join(sorted(meta["characters"]))
            assert set(meta["characters"]) <= set(CHARACTERS)
            assert len(set(meta["characters"])) == n
            assert meta["copyright"] == "ymnsynth"
            assert ("solo" in meta["tags"]) == (n == 1)


def test_synth_info_counts_add_up(dataset: tuple[Path, dict]) -> None:
    root, info = dataset
    on_disk = json.loads((root / "synth_info.json").read_text())
    assert on_disk == info
    assert sum(info["counts"]["kind"].values()) == 60
    assert sum(info["counts"]["folders"].values()) == 60
    assert len(info["characters"]) >= 6
    assert info["counts"]["kind"]["screenshot"] > info["counts"]["kind"]["regularization"]


def test_face_centres_cover_all_grid_cells_without_overlap() -> None:
    rng = np.random.default_rng(0)
    cells = set()
    for i in range(400):
        n = i % 5 + 1
        spec = sample_scene_spec(rng, "screenshot", SIZE, n_people=n)
        assert len(spec.people) == n
        for p in spec.people:
            assert p.d / 2 < p.cx < 1 - p.d / 2 and p.d / 2 < p.cy < 1 - p.d / 2
            cells.add((min(int(p.cx * 5), 4), min(int(p.cy * 5), 4)))
        for a in spec.people:
            for b in spec.people:
                if a is not b:  # face boxes never overlap
                    reach = (a.d + b.d) / 2
                    assert abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach
    assert len(cells) == 25


def test_face_height_bins_reachable_for_the_people_count_occur() -> None:
    rng = np.random.default_rng(1)
    bins = {n: set() for n in (1, 2, 5)}
    for n in bins:
        for _ in range(40):
            _, meta = render_scene(sample_scene_spec(rng, "screenshot", SIZE, n_people=n), SIZE)
            bins[n].add(min(3, int(meta["fh_ratio"] * 4)))
    assert bins == {1: {0, 1, 2, 3}, 2: {0, 1}, 5: {0}}


def test_palette_never_comes_near_skin() -> None:
    skin = np.array(SKIN)
    for colour in palette_colours():
        assert np.abs(np.array(colour) - skin).max() >= 56, colour
    for look in CHARACTERS.values():
        for colour in (look.hair, look.outfit, look.eyes):
            assert np.abs(np.array(colour) - skin).max() >= 56, (look.name, colour)


@pytest.mark.parametrize("kind", ["screenshot", "regularization", "fanart", "hands"])
def test_render_scene_ground_truth_is_skin(kind: str) -> None:
    rng = np.random.default_rng(11)
    for _ in range(5):
        image, meta = render_scene(sample_scene_spec(rng, kind, SIZE), SIZE)
        arr = np.asarray(image)
        skin = np.all(arr == SKIN, axis=-1)
        assert skin.sum() > 0 if meta["n_faces"] else skin.sum() == 0
        inside = np.zeros_like(skin)
        for left, top, right, bottom in meta["facepos"]:
            box = np.s_[
                round(top * SIZE) : round(bottom * SIZE), round(left * SIZE) : round(right * SIZE)
            ]
            assert skin[box].mean() > 0.5
            inside[box] = True
        assert not (skin & ~inside).any(), "skin colour outside the face boxes"


def test_render_layout_puts_faces_where_asked() -> None:
    boxes = [[0.05, 0.05, 0.2, 0.2], [0.6, 0.4, 0.9, 0.7]]
    image = render_layout(["SaitoMio", "unknown"], boxes, SIZE)
    arr = np.asarray(image)
    for left, top, right, bottom in boxes:
        cy, cx = round((top + bottom) / 2 * SIZE), round((left + right) / 2 * SIZE)
        assert tuple(arr[cy, cx - 1]) == SKIN or tuple(arr[cy + 2, cx]) == SKIN
    with pytest.raises(ValueError, match="characters"):
        render_layout(["SaitoMio"], boxes, SIZE)


def test_cli_writes_dataset(tmp_path: Path) -> None:
    assert main([str(tmp_path / "out"), "--n", "5", "--seed", "1", "--size", "96"]) == 0
    info = json.loads((tmp_path / "out" / "synth_info.json").read_text())
    assert info["size"] == 96 and info["n"] == 5
    assert len(list((tmp_path / "out").rglob("*.png"))) == 5


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        sample_scene_spec(np.random.default_rng(0), "selfie", SIZE)
