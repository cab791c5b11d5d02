"""ASP WeightTree: reproduce the card's multiply log, properties on random trees, category tree."""

from __future__ import annotations

import glob
import itertools
import json
import math
import tempfile
from pathlib import Path

import pytest
from fixture_tree import build_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from ymn.data.balance import (
    FolderWeight,
    compute_weights,
    format_multiply,
    is_image,
    main,
    read_weights_csv,
    weights_from_category_tree,
)

# --- the logged dataset ------------------------------------------------------------------------


def _subtree_probs(probs: dict[str, float]) -> dict[str, float]:
    """Probability of every folder's subtree (the folder and everything below it)."""
    out: dict[str, float] = {}
    for rel, p in probs.items():
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            key = "/".join(parts[:i])
            out[key] = out.get(key, 0.0) + p
    return out


def derive_weights(probs: dict[str, float]) -> dict[str, float]:
    """Folder weights that make WeightTree reproduce `probs` (folder -> own-image probability).

    Within a sibling group weights are proportional to subtree probabilities. A folder that
    holds images and has children is its own extra sibling with its own weight, so its
    children's weights are scaled to the unit where that weight stands for its own images.
    """
    sub = _subtree_probs(probs)
    children: dict[str, list[str]] = {}
    for rel in sub:
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        children.setdefault(parent, []).append(rel)
    weights: dict[str, float] = {}

    def assign(node: str, own_weight: float) -> None:
        kids = children.get(node, [])
        scale = own_weight / probs[node] if probs.get(node, 0) > 0 and kids else 1.0
        for kid in kids:
            weights[kid] = sub[kid] * scale
            assign(kid, weights[kid])

    assign("", 1.0)
    return weights


@pytest.fixture(scope="module")
def logged(module_tmp) -> tuple[Path, list[dict], Path]:
    """Fixture tree on disk, the logged rows, and a weights CSV with full-path patterns."""
    base = module_tmp.mktemp("balance")
    root = base / "processed"
    rows = build_tree(root)
    weights = derive_weights({r["dir"]: r["prob"] for r in rows})
    csv_path = base / "weights.csv"
    lines = [f"{glob.escape(str(root / rel))},{w!r}" for rel, w in weights.items()]
    csv_path.write_text("\n".join(lines) + "\n")
    return root, rows, csv_path


def _min_multiply_from_log(rows: list[dict]) -> float:
    return min(r["multiply_raw"] for r in rows)


def test_fixture_tree_matches_log(logged):
    root, rows, _ = logged
    assert len(rows) == 521
    assert sum(r["n_images"] for r in rows) == 35817
    for row in rows[:20]:
        images = [f for f in (root / row["dir"]).iterdir() if f.is_file() and is_image(f)]
        assert len(images) == row["n_images"]


def test_compute_weights_reproduces_logged_probs_and_multiply(logged):
    root, rows, csv_path = logged
    result = compute_weights(
        root,
        read_weights_csv(csv_path),
        min_multiply=_min_multiply_from_log(rows),
        max_multiply=250,
        rounding="int",
    )
    assert set(result) == {r["dir"] for r in rows}
    for row in rows:
        got = result[row["dir"]]
        assert got.n_images == row["n_images"]
        assert got.prob == pytest.approx(row["prob"], abs=1e-9, rel=1e-9)
        assert got.multiply_raw == pytest.approx(row["multiply_raw"], rel=1e-9)
        assert got.multiply == row["multiply"], row["dir"]


def test_cli_json_reproduces_log(logged, tmp_path):
    root, rows, csv_path = logged
    out = tmp_path / "weights.json"
    assert (
        main([str(root), "--weights", str(csv_path), "--max-multiply", "250", "--json", str(out)])
        == 0
    )
    payload = json.loads(out.read_text())
    assert len(payload) == len(rows)
    for row in rows:
        got = payload[row["dir"]]
        assert abs(got["prob"] - row["prob"]) <= 1e-9
        assert got["n_images"] == row["n_images"]
        assert got["multiply"] == row["multiply"]


def test_cli_prints_summary(logged, capsys):
    root, rows, csv_path = logged
    assert main([str(root), "--weights", str(csv_path)]) == 0
    text = capsys.readouterr().out
    assert f"folders: {len(rows)}" in text
    assert f"images: {sum(r['n_images'] for r in rows)}" in text


# --- small units -------------------------------------------------------------------------------


def test_images_are_known_suffixes_in_any_case_and_never_hidden_files():
    names = ["a.PNG", "b.jpg", "c.JpEg", "d.webp", "e.txt", "f.json", "g.gif", ".h.png", "._i.jpg"]
    assert [n for n in names if is_image(n)] == ["a.PNG", "b.jpg", "c.JpEg", "d.webp"]


def test_weights_and_packing_see_the_same_images(tmp_path):
    """balance (weights) and pack (shards) count the same files: hidden ones in neither."""
    from ymn.data.balance import compute_weights
    from ymn.data.pack import image_folders

    for name in ["x/a.png", "x/b.jpg", "x/.c.png", "x/d.txt", ".cache/e.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    packed = image_folders(tmp_path)
    weighed = {rel: w.n_images for rel, w in compute_weights(tmp_path).items()}
    assert packed == {"x": ["a.png", "b.jpg"]}
    assert weighed == {"x": 2}


def test_read_weights_csv_names_file_and_line(tmp_path):
    good = tmp_path / "w.csv"
    good.write_text("1_character,2\n\n*/face_height_ratio_0-25,1.5\n")
    assert read_weights_csv(good) == [("1_character", 2.0), ("*/face_height_ratio_0-25", 1.5)]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,1\nb,heavy\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        read_weights_csv(bad)


def test_basename_match_beats_pattern_and_first_pattern_wins(tmp_path):
    for rel in ["x/keep", "x/other", "y/keep"]:
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "0.png").touch()
    rows = [("*/x/*", 3.0), ("*/x/other", 9.0), ("keep", 1.0)]
    result = compute_weights(tmp_path, rows)
    # under x: keep (basename, 1) vs other (first pattern */x/*, 3)
    assert result["x/other"].prob / result["x/keep"].prob == pytest.approx(3.0)


def test_format_multiply_matches_asp_text():
    assert format_multiply(3.0, "int") == "3"
    assert format_multiply(1.23, "2") == "1.23"
    assert format_multiply(250.0, "2") == "250.0"


def test_rounding_is_half_to_even_and_capped(tmp_path):
    # per-image weights 1 : 2.5 : 1000  ->  raw multiply 1, 2.5, 1000
    for rel, n in [("a", 10), ("b", 4), ("c", 1)]:
        (tmp_path / rel).mkdir()
        for i in range(n):
            (tmp_path / rel / f"{i}.png").touch()
    result = compute_weights(tmp_path, [("a", 1.0), ("b", 1.0), ("c", 100.0)], max_multiply=250)
    assert result["b"].multiply_raw == pytest.approx(2.5)
    assert result["b"].multiply == 2  # numpy rounds half to even, as ASP did
    assert result["c"].multiply == 250


# --- properties on random trees ----------------------------------------------------------------

_tree = st.recursive(
    st.tuples(st.integers(0, 3), st.just(())),
    lambda kids: st.tuples(st.integers(0, 3), st.lists(kids, min_size=1, max_size=3).map(tuple)),
    max_leaves=8,
)


_names = itertools.count()


def _materialise(tree, folder: Path, rel: str, out: dict[str, tuple[int, list[str]]]) -> int:
    """Create the tree on disk with unique folder names; returns images in the subtree."""
    n_images, children = tree
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        (folder / f"{i}.jpg").touch()
    kid_rels = []
    total = n_images
    for child in children:
        name = f"f{next(_names)}"  # unique basenames: each folder's own weight row
        child_rel = name if rel == "." else f"{rel}/{name}"
        sub_total = _materialise(child, folder / name, child_rel, out)
        if sub_total:
            kid_rels.append(child_rel)
        total += sub_total
    out[rel] = (n_images, kid_rels)
    return total


@settings(max_examples=40, deadline=None)
@given(
    tree=_tree,
    weight_pool=st.lists(st.floats(0.1, 10.0), min_size=12, max_size=12),
    min_multiply=st.sampled_from([1.0, 0.5, 2.0]),
)
def test_weight_tree_properties(tree, weight_pool, min_multiply):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        layout: dict[str, tuple[int, list[str]]] = {}
        if _materialise(tree, root, ".", layout) == 0:
            assert compute_weights(root) == {}
            return
        folders = [rel for rel in layout if rel != "."]
        weight = {rel: weight_pool[i % len(weight_pool)] for i, rel in enumerate(folders)}
        rows = [(rel.rsplit("/", 1)[-1], w) for rel, w in weight.items()]
        weight["."] = 1.0  # the root's basename is in no row
        result = compute_weights(root, rows, min_multiply=min_multiply, rounding="2")

    assert math.fsum(fw.prob for fw in result.values()) == pytest.approx(1.0, abs=1e-9)

    def subtree_prob(rel: str) -> float:
        if rel == ".":
            return math.fsum(fw.prob for fw in result.values())
        return math.fsum(fw.prob for k, fw in result.items() if k == rel or k.startswith(rel + "/"))

    for parent, (n_own, kids) in layout.items():
        members = [(subtree_prob(k), weight[k]) for k in kids]
        if n_own and kids:
            members.append((result[parent].prob, weight[parent]))
        for p, w in members[1:]:
            assert p / members[0][0] == pytest.approx(w / members[0][1], rel=1e-9)

    lowest = min(result.values(), key=lambda fw: fw.prob / fw.n_images)
    assert lowest.multiply == pytest.approx(round(min_multiply, 2))
    assert all(isinstance(fw, FolderWeight) for fw in result.values())


# --- category tree -----------------------------------------------------------------------------

CATEGORY_TREE = {
    "yamanosusume/screenshots": 0.3,
    "yamanosusume/fanart": 0.2,
    "regularization": 0.5,
    "regularization/hands": 0.05,
}


def _make_dataset(root: Path) -> None:
    for rel, n in [
        ("yamanosusume/screenshots/1_character/A", 5),
        ("yamanosusume/screenshots/2_characters/A+B", 2),
        ("yamanosusume/fanart", 7),
        ("regularization/hands", 3),
        ("regularization/artists/x/1_people", 4),
        ("regularization/artists/y", 1),
        ("regularization/barefoot", 6),
    ]:
        (root / rel).mkdir(parents=True)
        for i in range(n):
            (root / rel / f"{i}.png").touch()


def _subtree(result: dict[str, FolderWeight], rel: str) -> float:
    return sum(fw.prob for k, fw in result.items() if k == rel or k.startswith(rel + "/"))


def test_category_tree_gives_configured_subtree_probs(tmp_path):
    _make_dataset(tmp_path)
    rows = weights_from_category_tree(CATEGORY_TREE, root=tmp_path)
    result = compute_weights(tmp_path, rows)
    assert sum(fw.prob for fw in result.values()) == pytest.approx(1.0)
    for rel, target in CATEGORY_TREE.items():
        assert _subtree(result, rel) == pytest.approx(target, abs=1e-12), rel
    # unnamed siblings of regularization/hands (artists, barefoot) share what is left equally
    for rel in ["regularization/artists", "regularization/barefoot"]:
        assert _subtree(result, rel) == pytest.approx(0.45 / 2, abs=1e-12)
    # below an unnamed folder, siblings are uniform (weight 1 each)
    assert _subtree(result, "regularization/artists/x") == pytest.approx(0.225 / 2)


def test_category_tree_without_root_assumes_one_unnamed_sibling(tmp_path):
    _make_dataset(tmp_path)
    tree = {
        "yamanosusume": 0.6,
        "regularization": 0.4,
        "regularization/hands": 0.1,
        "regularization/barefoot": 0.1,
    }
    result = compute_weights(tmp_path, weights_from_category_tree(tree))
    assert _subtree(result, "yamanosusume") == pytest.approx(0.6)
    assert _subtree(result, "regularization/hands") == pytest.approx(0.1)
    assert _subtree(result, "regularization/artists") == pytest.approx(0.2)


def test_category_tree_rejects_overfull_children():
    with pytest.raises(ValueError, match="regularization"):
        weights_from_category_tree({"regularization": 0.2, "regularization/hands": 0.3})
