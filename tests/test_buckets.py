"""Bucket tables, crop plans, and how crops and flips move face boxes and caption tokens."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ymn.data.buckets import (
    ED1_BUCKETS,
    ED1_JITTER,
    CropPlan,
    apply_crop,
    bucket_table,
    nearest_bucket,
    plan_crop,
    resized_size,
    transform_facepos,
    transform_meta,
)
from ymn.data.captions import CaptionConfig, build_caption


@pytest.mark.parametrize(("res", "n"), [(640, 19), (704, 25), (512, 15)])
def test_ed1_tables(res, n):
    table = bucket_table(res)
    assert table == ED1_BUCKETS[res] and len(table) == n == len(set(table))
    assert table[0] == (res, res)
    for w, h in table:
        assert (h, w) in table and w % 64 == 0 and h % 64 == 0
    assert (1600, 256) in bucket_table(640) and (320, 1536) in bucket_table(704)


@pytest.mark.parametrize("res", [128, 96, 256, 320, 600, 1024])
def test_computed_tables(res):
    table = bucket_table(res)
    assert (table[0][0], table[0][1]) == (table[0][0], table[0][0])  # square first
    assert len(table) == len(set(table)) > 1
    for w, h in table:
        assert w * h <= res * res
        assert w % 8 == 0 and h % 8 == 0
        assert max(w / h, h / w) <= 4.0
        assert (h, w) in table
    assert bucket_table(640, step=64) != bucket_table(640)  # explicit step: computed, not ED1


def test_computed_table_tiny_demo_and_bad_step():
    table = bucket_table(128)
    assert (128, 128) in table and all(w % 16 == 0 and h % 16 == 0 for w, h in table)
    assert len(bucket_table(128, step=8)) > len(table)
    with pytest.raises(ValueError, match="multiple of 8"):
        bucket_table(128, step=12)


def test_nearest_bucket():
    table = bucket_table(640)
    assert nearest_bucket((1920, 1080), table) == (896, 448)  # 1.78 → 2.0 beats 1.5
    assert nearest_bucket((1080, 1920), table) == (448, 896)
    assert nearest_bucket((500, 500), table) == (640, 640)
    assert nearest_bucket((5000, 100), table) == (1600, 256)
    assert nearest_bucket((1250, 1000), table) == (704, 576)  # exact aspect 1.25


def check_plan(size, bucket, plan: CropPlan):
    rw, rh = resized_size(size, plan.scale)
    left, top, right, bottom = plan.box
    assert (right - left, bottom - top) == bucket
    assert 0 <= left and 0 <= top and right <= rw and bottom <= rh


@settings(max_examples=150, deadline=None)
@given(
    w=st.integers(8, 4000),
    h=st.integers(8, 4000),
    res=st.sampled_from([128, 640, 704]),
    policy=st.sampled_from(["ed1", "center", "random"]),
    seed=st.integers(0, 10**6),
)
def test_crop_plans_stay_inside_the_resized_image(w, h, res, policy, seed):
    bucket = nearest_bucket((w, h), bucket_table(res))
    plan = plan_crop((w, h), bucket, policy, random.Random(seed))
    check_plan((w, h), bucket, plan)


def test_ed1_non_square_crops_from_top_left_with_jitter():
    rng = random.Random(0)
    wide = [plan_crop((2400, 1000), (896, 448), "ed1", rng) for _ in range(300)]  # 2.4 > 2.0
    lefts = {p.box[0] for p in wide}
    assert all(p.box[1] == 0 for p in wide)
    assert min(lefts) == 0 and max(lefts) == round(ED1_JITTER * 448 / 1000)
    hd = [plan_crop((1920, 1080), (896, 448), "ed1", rng) for _ in range(300)]  # 1.78 < 2.0
    assert all(p.box[0] == 0 for p in hd)
    assert max(p.box[1] for p in hd) == round(ED1_JITTER * 896 / 1920)
    tall = [plan_crop((1000, 3000), (384, 1024), "ed1", rng) for _ in range(300)]
    assert all(p.box[0] == 0 for p in tall)
    assert max(p.box[1] for p in tall) == round(ED1_JITTER * 384 / 1000)


def test_ed1_square_bucket_crops_uniformly():
    rng = random.Random(1)
    plans = [plan_crop((1200, 800), (640, 640), "ed1", rng) for _ in range(2000)]
    excess = resized_size((1200, 800), plans[0].scale)[0] - 640
    lefts = [p.box[0] for p in plans]
    assert min(lefts) <= excess * 0.02 and max(lefts) >= excess * 0.98
    assert abs(sum(lefts) / len(lefts) - excess / 2) < excess * 0.05
    # a square image larger than the square bucket: a random trim of up to 4% (zoom in)
    trim = plan_crop((1000, 1000), (640, 640), "ed1", rng)
    assert 640 / 1000 < trim.scale <= 640 / (1000 - int(640 * 0.04))


def test_center_and_random_policies():
    center = plan_crop((1000, 500), (640, 640), "center", random.Random(0))
    rw, _ = resized_size((1000, 500), center.scale)
    assert center.box[0] == (rw - 640) // 2 and center.box[1] == 0
    boxes = {plan_crop((1000, 500), (640, 640), "random", random.Random(s)).box for s in range(20)}
    assert len(boxes) > 10
    with pytest.raises(ValueError, match="crop policy"):
        plan_crop((10, 10), (8, 8), "top", random.Random(0))


def test_apply_crop_size_and_flip():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 100, 100))  # red band on the left
    plan = plan_crop((300, 100), (128, 64), "center", random.Random(0))
    out = apply_crop(image, (128, 64), plan, flip=False)
    flipped = apply_crop(image, (128, 64), plan, flip=True)
    assert out.size == flipped.size == (128, 64)
    assert out.getpixel((2, 32))[0] > 200 and out.getpixel((125, 32))[0] < 50
    assert flipped.getpixel((125, 32))[0] > 200 and flipped.getpixel((2, 32))[0] < 50


def test_flip_moves_a_left_face_to_the_right():
    plan = CropPlan(1.0, (0, 0, 100, 100))
    boxes, kept = transform_facepos([[0.05, 0.4, 0.15, 0.5]], (100, 100), plan, flip=True)
    assert kept == [0] and boxes[0] == pytest.approx([0.85, 0.4, 0.95, 0.5])
    same, _ = transform_facepos([[0.05, 0.4, 0.15, 0.5]], (100, 100), plan, flip=False)
    assert same[0] == pytest.approx([0.05, 0.4, 0.15, 0.5])


def test_crop_maps_boxes_into_the_output_and_applies_the_20_percent_rule():
    # 200x100 source, scale 1, keep the right half [100, 200)
    plan = CropPlan(1.0, (100, 0, 200, 100))
    faces = [
        [0.55, 0.1, 0.65, 0.3],  # fully inside
        [0.40, 0.1, 0.52, 0.3],  # centre x=92 px: outside the crop → dropped
        [0.47, 0.1, 0.57, 0.3],  # x 94..114, centre 104, core 102..106: inside → kept
        [0.45, 0.1, 0.55, 0.3],  # x 90..110, centre 100, core 98..102: cut → dropped
    ]
    boxes, kept = transform_facepos(faces, (200, 100), plan, flip=False)
    assert kept == [0, 2]
    assert boxes[0] == pytest.approx([0.1, 0.1, 0.3, 0.3])
    assert boxes[1][0] == pytest.approx(-0.06)  # not clipped, as ASP


def test_transform_meta_drops_faces_characters_and_people():
    meta = {
        "n_faces": 2,
        "n_people": 3,
        "facepos": [[0.05, 0.1, 0.15, 0.3], [0.7, 0.1, 0.8, 0.3]],
        "characters": ["AobaKokona", "KuraueHinata"],
        "fh_ratio": 0.2,
        "tags": [],
    }
    plan = CropPlan(1.0, (100, 0, 200, 100))  # right half of a 200x100 image
    out = transform_meta(meta, (200, 100), plan, flip=False)
    assert out["n_faces"] == 1 and out["n_people"] == 2
    assert out["characters"] == ["KuraueHinata"]
    assert out["fh_ratio"] == pytest.approx(0.2)
    many = transform_meta({**meta, "n_people": "many"}, (200, 100), plan, flip=False)
    assert many["n_people"] == "many"
    assert meta["n_faces"] == 2  # input untouched
    unaligned = transform_meta({**meta, "characters": ["X"]}, (200, 100), plan, flip=False)
    assert unaligned["characters"] == ["X"]


def test_flip_swaps_horizontal_tokens_in_the_caption():
    meta = {
        "n_people": 2,
        "facepos": [[0.02, 0.02, 0.12, 0.12], [0.6, 0.85, 0.7, 0.95]],
        "characters": ["A", "B"],
        "tags": [],
    }
    cfg = CaptionConfig(dropout=0.0)
    plan = plan_crop((640, 640), (640, 640), "center", random.Random(0))
    plain = build_caption(transform_meta(meta, (640, 640), plan, False), cfg, random.Random(0))
    mirrored = build_caption(transform_meta(meta, (640, 640), plan, True), cfg, random.Random(0))
    assert plain == "2people, A B, fhll fvtp fhmr fvbt"
    assert mirrored == "2people, A B, fhri fvtp fhml fvbt"
