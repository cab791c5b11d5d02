"""Count and face-grid probe metrics on hand-built cases; the probe prompt set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ymn.data.captions import GRID_TOKENS, CaptionConfig, grid_cell
from ymn.probes.count import confusion_matrix, count_metrics, write_confusion_png
from ymn.probes.facegrid import chebyshev, facegrid_metrics, match_cells
from ymn.probes.prompts import build_probe_prompts, load_prompt_file


def cell_box(col: int, row: int, grid: int = 5) -> list[float]:
    """A small face box centred in cell (col, row)."""
    x, y = (col + 0.5) / grid, (row + 0.5) / grid
    return [x - 0.03, y - 0.03, x + 0.03, y + 0.03]


# ----------------------------------------------------------------------------- count


def test_perfect_detection() -> None:
    requested = [1, 2, 3, 4, 5] * 4
    m = count_metrics(requested, requested, n_permutations=200)
    assert m["exact_acc"] == 1.0 and m["mae"] == 0.0 and m["signed_bias"] == 0.0
    assert m["slope"] == pytest.approx(1.0) and m["intercept"] == pytest.approx(0.0, abs=1e-9)
    assert m["corr"] == pytest.approx(1.0)
    assert m["corr_p"] < 0.01
    assert np.trace(np.array(m["confusion"]["matrix"])) == len(requested)


@pytest.mark.parametrize("offset", [1, -1])
def test_off_by_one_bias_sign(offset: int) -> None:
    requested = [2, 3, 4] * 5
    detected = [r + offset for r in requested]
    m = count_metrics(requested, detected, n_permutations=0)
    assert m["exact_acc"] == 0.0 and m["mae"] == 1.0
    assert m["signed_bias"] == offset
    assert m["slope"] == pytest.approx(1.0)
    assert m["mean_detected"]["3"] == 3 + offset


def test_unrelated_counts_have_large_p_and_flat_slope() -> None:
    rng = np.random.default_rng(0)
    requested = np.repeat([1, 2, 3, 4, 5], 40)
    detected = rng.integers(0, 6, size=len(requested))
    m = count_metrics(requested.tolist(), detected.tolist(), n_permutations=500, seed=1)
    assert m["corr_p"] > 0.01
    assert abs(m["slope"]) < 0.3


def test_constant_detection_gives_nan_corr() -> None:
    m = count_metrics([1, 2, 3], [2, 2, 2], n_permutations=10)
    assert np.isnan(m["corr"]) and np.isnan(m["corr_p"])
    assert m["slope"] == pytest.approx(0.0)


def test_confusion_matrix_layout() -> None:
    c = confusion_matrix([1, 1, 2], [1, 2, 0])
    assert c["labels"] == [0, 1, 2]
    assert c["matrix"] == [[0, 0, 0], [0, 1, 1], [1, 0, 0]]


def test_confusion_png(tmp_path) -> None:
    path = write_confusion_png(confusion_matrix([1, 2, 3], [1, 3, 3]), tmp_path / "c.png", "t")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- face grid


def test_chebyshev() -> None:
    assert chebyshev((0, 0), (0, 0)) == 0
    assert chebyshev((1, 1), (2, 2)) == 1
    assert chebyshev((0, 4), (3, 2)) == 3


def test_hungarian_matching_prefers_total_distance() -> None:
    # greedy in target order would pair (1,0)->(1,0) and leave (0,0)->(4,4)
    pairs = match_cells([(0, 0), (1, 0)], [(1, 0), (2, 0)])
    assert dict(pairs) == {(0, 0): (1, 0), (1, 0): (2, 0)}
    assert match_cells([(0, 0), (4, 4)], [(4, 3)]) == [((0, 0), None), ((4, 4), (4, 3))]


def test_facegrid_perfect_and_shifted() -> None:
    targets = [[(0, 2), (4, 2)], [(2, 0)], [(1, 1), (3, 3), (2, 4)]]
    perfect = [[cell_box(*c) for c in cells] for cells in targets]
    m = facegrid_metrics(targets, perfect)
    assert m["cell_acc"] == 1.0 and m["mean_chebyshev"] == 0.0 and m["matched_frac"] == 1.0
    assert m["chance"] == pytest.approx(0.04)
    shifted = [[cell_box(min(c + 1, 4), r) for c, r in cells] for cells in targets]
    s = facegrid_metrics(targets, shifted)
    # (4,2) stays in column 4 after clamping: 1 hit of 6 targets, the rest 1 cell off
    assert s["cell_acc"] == pytest.approx(1 / 6)
    assert s["mean_chebyshev"] == pytest.approx(5 / 6)


def test_facegrid_missing_faces_count_as_misses() -> None:
    m = facegrid_metrics([[(0, 0), (4, 4)]], [[cell_box(4, 4)]])
    assert m["cell_acc"] == 0.5 and m["matched_frac"] == 0.5 and m["mean_chebyshev"] == 0.0


def test_most_frequent_cell_baseline() -> None:
    targets = [[(2, 2)], [(2, 2)], [(2, 2)], [(0, 0)]]
    m = facegrid_metrics(targets, [[cell_box(2, 2)]] * 4)
    assert m["most_frequent_cell_baseline"] == 0.75
    assert m["cell_acc"] == 0.75  # a model that always draws the centre gets the baseline


def test_facegrid_3x3_grid() -> None:
    m = facegrid_metrics([[(0, 0), (2, 1)]], [[cell_box(0, 0, 3), cell_box(2, 1, 3)]], grid=3)
    assert m["cell_acc"] == 1.0 and m["chance"] == pytest.approx(1 / 9)


# ----------------------------------------------------------------------------- prompts


def test_probe_prompts_share_seeds_and_match_cells() -> None:
    records = build_probe_prompts(seeds=(3, 7))
    by_count: dict[int, set[int]] = {}
    for r in records:
        by_count.setdefault(r["count"], set()).add(r["seed"])
        assert len(r["cells"]) == r["count"]
        assert r["prompt"].startswith("manypeople" if r["label"] == "many" else f"{r['count']}p")
    assert set(by_count) == {1, 2, 3, 4, 5, 6}
    assert all(seeds == {3, 7} for seeds in by_count.values())
    row3 = next(r for r in records if r["count"] == 3 and r["layout"] == "row")
    assert row3["prompt"] == "3people, fhll fvmd fhmd fvmd fhri fvmd"
    assert row3["cells"] == [[0, 2], [2, 2], [4, 2]]


def test_probe_prompts_use_the_ablation_vocabulary() -> None:
    cfg = CaptionConfig(count_spelling="words", count_position="last", grid="asp3")
    records = build_probe_prompts(cfg, counts=(2,), layouts=("row",), seeds=(0,))
    (left, _, right), (_, middle, _) = GRID_TOKENS["asp3"]
    assert records[0]["prompt"] == f"{left} {middle} {right} {middle}, two people"
    assert records[0]["cells"] == [[0, 1], [2, 1]]
    absent = build_probe_prompts(CaptionConfig(count_position="absent"), counts=(1,), seeds=(0,))
    assert "person" not in absent[0]["prompt"]


def test_scatter_cells_are_distinct_and_consistent() -> None:
    for r in build_probe_prompts(counts=(5,), layouts=("scatter",), seeds=(0,)):
        assert len({tuple(c) for c in r["cells"]}) == 5


def test_grid_cell_agrees_with_caption_code() -> None:
    assert grid_cell(cell_box(3, 1)) == (3, 1)


def test_load_prompt_file_text_and_json(tmp_path) -> None:
    text = tmp_path / "p.txt"
    text.write_text("# comment\n2people, fhml fvmd\n\n1person\n")
    assert [p["prompt"] for p in load_prompt_file(text)] == ["2people, fhml fvmd", "1person"]
    ed2 = tmp_path / "sample_prompts.json"
    ed2.write_text(
        json.dumps(
            {
                "batch_size": 2,
                "samples": [
                    {"prompt": "a", "negative_prompt": "b", "seed": -1, "size": [64, 96]},
                    {"prompt": "c", "seed": 5, "scale": 3.5},
                ],
            }
        )
    )
    a, c = load_prompt_file(ed2)
    assert a == {"prompt": "a", "negative": "b", "seed": None, "size": [64, 96], "cfg": None}
    assert c["seed"] == 5 and c["cfg"] == 3.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(ValueError, match=r"bad.json\[0\]"):
        load_prompt_file(bad)


def test_prompt_file_defaults_apply_to_every_sample(tmp_path) -> None:
    """One reader for ymn-sample and the sample callback: ED2's file-level seed, cfgs and size
    fill what a sample leaves unset, and a cfg list gives one entry per value."""
    ed2 = tmp_path / "sample_prompts.json"
    samples = ["a", {"prompt": "b", "seed": 1, "cfg": 2}]
    ed2.write_text(json.dumps({"seed": 555, "cfgs": [4, 7], "size": "64x96", "samples": samples}))
    got = [(e["prompt"], e["seed"], e["cfg"], e["size"]) for e in load_prompt_file(ed2)]
    assert got == [("a", 555, 4.0, [64, 96]), ("a", 555, 7.0, [64, 96]), ("b", 1, 2.0, [64, 96])]
    ed2.write_text(json.dumps({"samples": [{"prompt": "c", "size": [64, 90]}]}))
    with pytest.raises(ValueError, match=r"sample_prompts.json\[0\]: size"):
        load_prompt_file(ed2)
