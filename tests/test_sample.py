"""ymn-sample: prompt parsing, txt2img and inpainting from tiny exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ymn.callbacks.samples import image_grid
from ymn.model.components import build_tiny
from ymn.model.export import export_both
from ymn.probes.prompts import load_prompt_file, parse_size
from ymn.sample import Job, build_jobs, paste_unmasked
from ymn.sample import run_sample as sample_main


@pytest.fixture(scope="module")
def run_dir(module_tmp):
    """A ymn run directory holding both export formats of the tiny model."""
    run = module_tmp.mktemp("run")
    (run / "config_resolved.yaml").write_text("model: {}\n")
    export_both(build_tiny(0), run / "export")
    return run


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------


def test_parse_size():
    assert parse_size("64x96") == (64, 96)
    assert parse_size([640, 384]) == (640, 384)
    for bad in ("64", "63x64", "0x64", "axb"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_prompt_file_formats(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("1person, aoi\n\n# a comment\n2people, aoi, hinata\n")
    assert [s["prompt"] for s in load_prompt_file(text)] == ["1person, aoi", "2people, aoi, hinata"]
    plain = tmp_path / "p.json"
    plain.write_text(json.dumps(["a", {"prompt": "b", "negative": "bad", "seed": 9, "cfg": 3}]))
    b = {"prompt": "b", "negative": "bad", "seed": 9, "size": None, "cfg": 3.0}
    assert load_prompt_file(plain)[1] == b
    ed2 = tmp_path / "ed2.json"
    ed2.write_text(
        json.dumps(
            {
                "seed": 555,
                "cfgs": [4, 7],
                "samples": [
                    {"prompt": "c", "negative_prompt": "n", "seed": -1, "size": [64, 128]},
                ],
            }
        )
    )
    jobs = build_jobs(load_prompt_file(ed2), Job("", seed=0, cfg=5.0), n=2)
    assert [(j.seed, j.cfg) for j in jobs] == [(0, 4.0), (1, 4.0), (0, 7.0), (1, 7.0)]
    assert {(j.prompt, j.negative, j.width, j.height) for j in jobs} == {("c", "n", 64, 128)}
    missing = tmp_path / "bad.json"
    missing.write_text(json.dumps([{"seed": 1}]))
    with pytest.raises(ValueError, match=r"bad.json\[0\]: needs a 'prompt'"):
        load_prompt_file(missing)


def test_jobs_keep_explicit_values_and_seed_ranges():
    base = Job("", negative="lowres", seed=10, width=64, height=64, cfg=6.0)
    jobs = build_jobs([{"prompt": "a"}, {"prompt": "b", "seed": 3, "size": [64, 128]}], base, 2)
    assert [(j.prompt, j.seed, j.height) for j in jobs] == [
        ("a", 10, 64),
        ("a", 11, 64),
        ("b", 3, 128),
        ("b", 4, 128),
    ]
    assert {j.negative for j in jobs} == {"lowres"}


def test_grid_places_every_image():
    colours = ["red", "green", "blue"]
    grid = image_grid([Image.new("RGB", (8, 16), c) for c in colours])
    assert grid.size == (16, 32)
    assert [grid.getpixel(xy) for xy in ((0, 0), (8, 0), (0, 16))] == [
        (255, 0, 0),
        (0, 128, 0),
        (0, 0, 255),
    ]


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def test_txt2img_writes_pngs_and_grid_and_is_seeded(run_dir, tmp_path, capsys):
    args = ["--prompt", "2people, aoi", "--n", "2", "--seed", "5", "--steps", "2"]
    args += ["--size", "64x96", "--cfg", "4"]
    first = sample_main(
        [str(run_dir / "export" / "model.safetensors"), *args, "--out", str(tmp_path / "a")]
    )
    assert [p.name for p in first] == ["000_seed5.png", "001_seed6.png"]
    assert all(Image.open(p).size == (64, 96) for p in first)
    assert Image.open(tmp_path / "a" / "grid.png").size == (128, 96)
    record = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert [im["seed"] for im in record["images"]] == [5, 6]
    assert str(tmp_path / "a") in capsys.readouterr().out
    assert not np.array_equal(pixels(first[0]), pixels(first[1]))  # seeds differ
    # Same seeds from the run directory (its diffusers folder): the very same images.
    args[3] = "1"  # --n 1: the first seed is enough
    [again] = sample_main([str(run_dir), *args, "--out", str(tmp_path / "b")])
    assert np.array_equal(pixels(first[0]), pixels(again))


def test_inpainting_keeps_the_unmasked_region(run_dir, tmp_path):
    size = 64
    yy, xx = np.mgrid[0:size, 0:size]
    init = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2 :] = 255  # repaint the right half
    Image.fromarray(init).save(tmp_path / "init.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    files = ["--init-image", str(tmp_path / "init.png"), "--mask", str(tmp_path / "mask.png")]
    outs = [
        sample_main(
            [
                str(run_dir),
                "--prompt",
                prompt,
                "--steps",
                "2",
                "--seed",
                str(seed),
                *files,
                "--out",
                str(tmp_path / f"o{seed}"),
            ]
        )[0]  # fmt: skip
        for prompt, seed in (("aoi, face", 1), ("2people, mountain", 2))
    ]
    assert Image.open(outs[0]).size == (size, size)  # the init image's size by default

    # Two generations repaint the right half differently and keep the left half: the init
    # image's latents, decoded (an untrained decoder mixes in a little of the other half).
    diff = np.abs(pixels(outs[0]) - pixels(outs[1]))
    kept, repainted = diff[:, : size // 4].mean(), diff[:, 3 * size // 4 :].mean()
    assert kept < 0.25 * repainted, (kept, repainted)


def test_paste_unmasked_keeps_black_and_takes_white():
    out, image = Image.new("RGB", (16, 8), "red"), Image.new("RGB", (16, 8), "blue")
    mask = Image.fromarray(np.repeat(np.array([[0] * 8 + [255] * 8], np.uint8), 8, axis=0))
    result = np.asarray(paste_unmasked(out, image, mask))
    assert (result[:, :8] == (0, 0, 255)).all() and (result[:, 8:] == (255, 0, 0)).all()


def test_bad_model_path_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    with pytest.raises(SystemExit, match=f"ymn-sample: model {missing}: no such file"):
        sample_main([str(missing), "--prompt", "a", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_inpainting_needs_both_image_and_mask(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sample_main(["m", "--prompt", "a", "--mask", str(tmp_path / "m.png")])
    assert "both --init-image and --mask" in capsys.readouterr().err
