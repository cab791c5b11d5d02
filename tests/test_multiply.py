"""multiply.txt: reading, ED1 truncation and drops, ED2 exact fractional epochs, extra picks."""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import pytest
from fixture_tree import load_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from ymn.data.balance import compute_weights, main
from ymn.data.multiply import (
    MAX_COPY_ROUNDS,
    CategoryPlan,
    copies_in_round,
    copy_offset,
    copy_rounds,
    draws_for_sample,
    dropped_categories,
    dropped_images,
    dropped_message,
    ed1_copies,
    epoch_size,
    permute_index,
    plan_epoch,
    read_multiply_txt,
    warn_dropped,
)


@pytest.fixture(scope="module")
def categories() -> dict[str, tuple[int, float]]:
    """The card's folders with their raw (unrounded) multiply: fractional, as ED2 would use."""
    return {r["dir"]: (r["n_images"], r["multiply_raw"]) for r in load_rows()}


def _exact_floor_total(categories: dict[str, tuple[int, float]]) -> int:
    return math.floor(sum(Fraction(n) * Fraction(m) for n, m in categories.values()))


# --- reading -----------------------------------------------------------------------------------


def test_read_multiply_txt(tmp_path):
    assert read_multiply_txt(tmp_path) is None
    (tmp_path / "multiply.txt").write_text(" 1.5\n")
    assert read_multiply_txt(tmp_path) == 1.5
    (tmp_path / "multiply.txt").write_text("3")
    assert read_multiply_txt(tmp_path) == 3.0
    (tmp_path / "multiply.txt").write_text("three")
    with pytest.raises(ValueError, match=r"multiply\.txt"):
        read_multiply_txt(tmp_path)


@pytest.mark.parametrize(("raw", "copies"), [(1.5, 1), (0.5, 0), (3.0, 3), (2.99, 2), (0.0, 0)])
def test_ed1_copies_truncates(raw, copies):
    assert ed1_copies(raw) == copies == int(float(str(raw)))


@pytest.mark.parametrize("rounding", ["int", "2"])
def test_write_multiply_files_read_back(tmp_path, rounding):
    for rel, n in [("a/x", 7), ("a/y", 2), ("b", 3), ("b/c", 1)]:
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (tmp_path / rel / f"{i}.png").touch()
    weights = tmp_path / "w.csv"
    weights.write_text("x,3\nb,0.7\n")
    args = [str(tmp_path), "--weights", str(weights), "--round", rounding, "--write-multiply"]
    assert main(args + ["--json", str(tmp_path / "out.json")]) == 0
    expected = compute_weights(tmp_path, [("x", 3.0), ("b", 0.7)], rounding=rounding)
    assert set(expected) == {"a/x", "a/y", "b", "b/c"}
    for rel, fw in expected.items():
        assert read_multiply_txt(tmp_path / rel) == fw.multiply
    assert read_multiply_txt(tmp_path / "a") is None  # no images of its own: no file


# --- ED1 ---------------------------------------------------------------------------------------


def test_ed1_epoch_size_on_fixture(categories):
    plans = plan_epoch(categories, "ed1", seed=0, epoch=0)
    assert epoch_size(plans) == sum(n * int(m) for n, m in categories.values())
    assert all(p.extras == 0 for p in plans.values())
    assert plans == plan_epoch(categories, "ed1", seed=5, epoch=9)  # same every epoch


def test_ed1_drops_half_folder_with_warning(caplog):
    cats = {"kept": (10, 1.5), "reg/hands": (4, 0.5), "reg/feet": (3, 0.9), "empty": (0, 0.2)}
    assert dropped_categories(cats, "ed1") == ["reg/feet", "reg/hands"]
    assert dropped_categories(cats, "ed2") == []
    assert dropped_images(cats, "ed1") == {"reg/feet": 3, "reg/hands": 4}
    assert dropped_message(cats, "ed2") is None
    with caplog.at_level(logging.WARNING, logger="ymn.data.multiply"):
        assert warn_dropped(cats) == ["reg/feet", "reg/hands"]
    assert len(caplog.records) == 1  # one warning naming every dropped folder
    text = caplog.records[0].getMessage()
    assert "'reg/hands' (4 images, multiply 0.5)" in text and "'reg/feet' (3 images" in text
    assert "7 images" in text and "ed2" in text
    assert "'kept'" not in text and "'empty'" not in text
    assert plan_epoch(cats, "ed1")["reg/hands"] == CategoryPlan(4, 0, 0)


# --- ED2 ---------------------------------------------------------------------------------------


def test_ed2_epoch_size_exact_and_reseeded(categories):
    target = _exact_floor_total(categories)
    assert target > sum(n * int(m) for n, m in categories.values())  # ED2 keeps more
    plans = [plan_epoch(categories, "ed2", seed=3, epoch=e) for e in range(4)]
    for p in plans:
        assert epoch_size(p) == target
        assert all(0 <= q.extras <= q.n_images for q in p.values())
        assert all(q.whole == math.floor(categories[c][1]) for c, q in p.items())
    extras = [{c: q.extras for c, q in p.items()} for p in plans]
    assert len({tuple(sorted(e.items())) for e in extras}) > 1  # fill differs between epochs
    assert plan_epoch(categories, "ed2", seed=3, epoch=2) == plans[2]  # same (seed, epoch)


def test_ed2_extras_are_floor_or_ceil_of_share(categories):
    fill = {c: n * (Fraction(m) - math.floor(m)) for c, (n, m) in categories.items()}
    scale = math.floor(sum(fill.values())) / sum(fill.values())
    plans = plan_epoch(categories, "ed2", seed=1, epoch=0)
    for c, share in fill.items():
        assert math.floor(share * scale) <= plans[c].extras <= math.ceil(share * scale)


def test_draws_for_sample_sum_exactly(categories):
    plans = plan_epoch(categories, "ed2", seed=7, epoch=1)
    for c, plan in plans.items():
        draws = [draws_for_sample(c, i, plan, 7, 1) for i in range(plan.n_images)]
        assert set(draws) <= {plan.whole, plan.whole + 1}
        assert sum(draws) == plan.n_images * plan.whole + plan.extras, c


def test_extra_picks_change_per_epoch_and_repeat_per_seed():
    plan = CategoryPlan(n_images=200, whole=1, extras=50)

    def picked(seed: int, epoch: int) -> set[int]:
        return {i for i in range(200) if draws_for_sample("c", i, plan, seed, epoch) == 2}

    assert len(picked(0, 0)) == 50
    assert picked(0, 0) == picked(0, 0)
    assert picked(0, 0) != picked(0, 1)
    assert picked(0, 0) != picked(1, 0)
    with pytest.raises(IndexError, match="'c'"):
        draws_for_sample("c", 200, plan, 0, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 65, 1000])
def test_permute_index_is_a_bijection(n):
    assert sorted(permute_index(i, n, key=12345) for i in range(n)) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(
    cats=st.dictionaries(
        st.text("abc/", min_size=1, max_size=6),
        st.tuples(st.integers(0, 50), st.floats(0, 20, allow_nan=False)),
        max_size=8,
    ),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 1000),
)
def test_ed2_epoch_size_property(cats, seed, epoch):
    plans = plan_epoch(cats, "ed2", seed=seed, epoch=epoch)
    assert epoch_size(plans) == _exact_floor_total(cats)
    assert all(0 <= p.extras <= p.n_images for p in plans.values())
    assert all(p.extras == 0 for c, p in plans.items() if cats[c][1] == math.floor(cats[c][1]))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="'x'"):
        plan_epoch({"x": (3, -1.0)}, "ed2")
    with pytest.raises(ValueError, match="mode"):
        plan_epoch({"x": (3, 1.0)}, "ed3")  # type: ignore[arg-type]


@given(
    copies=st.integers(0, 300),
    rounds=st.integers(1, MAX_COPY_ROUNDS),
    offset=st.integers(0, 2**32 - 1),
)
def test_an_images_copies_are_spread_evenly_over_the_rounds(copies, rounds, offset):
    per_round = [copies_in_round(copies, r, rounds, offset) for r in range(rounds)]
    assert sum(per_round) == copies
    assert set(per_round) <= {copies // rounds, -(-copies // rounds)}  # floor or ceil of k/R


def test_the_rounds_are_the_mean_copies_of_a_drawn_image():
    # 40 images x 1 copy and 2 images x 20: 80 draws over 42 drawn images -> 2 rounds
    plans = {"a": CategoryPlan(40, 1, 0), "b": CategoryPlan(2, 20, 0), "c": CategoryPlan(5, 0, 0)}
    assert copy_rounds(plans) == 2
    assert copy_rounds({"a": CategoryPlan(3, 400, 0)}) == MAX_COPY_ROUNDS
    assert copy_rounds({"a": CategoryPlan(3, 0, 0)}) == 1  # nothing drawn
    assert copy_rounds({"a": CategoryPlan(10, 0, 4)}) == 1  # ED2 extras only: one copy each
    assert copy_offset(1, 0, "k") == copy_offset(1, 0, "k") != copy_offset(1, 1, "k")
