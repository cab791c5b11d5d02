"""Face-cell layout: each image lands in its leaf folder's cell folder, the tree above is kept."""

import json
from pathlib import Path

from PIL import Image

from ymn.data.cell_layout import cell_folder, cell_histogram, largest_face_cell, layout_by_cell


def write_image(folder: Path, name: str, facepos: list[list[float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
    (folder / f"{name}.json").write_text(json.dumps({"facepos": facepos}))


def test_the_largest_face_decides_the_cell():
    small_top_left = [0.0, 0.0, 0.1, 0.1]
    large_bottom_right = [0.6, 0.6, 1.0, 1.0]
    assert largest_face_cell([small_top_left, large_bottom_right]) == (4, 4)
    assert largest_face_cell([small_top_left]) == (0, 0)
    assert largest_face_cell([]) is None


def test_cell_folder_keeps_the_tree_and_adds_the_cell():
    rel = Path("screenshots/2_characters/a.png")
    assert cell_folder(rel, {"facepos": [[0.0, 0.4, 0.2, 0.6]]}) == Path(
        "screenshots/2_characters/cell_r2c0"
    )
    assert cell_folder(rel, {}) == Path("screenshots/2_characters/noface")


def test_layout_links_every_image_once_and_is_idempotent(tmp_path):
    src, dst = tmp_path / "images", tmp_path / "cells"
    centre = [[0.45, 0.45, 0.55, 0.55]]
    write_image(src / "screenshots" / "1_character", "a", centre)
    write_image(src / "screenshots" / "1_character", "b", centre)
    write_image(src / "fanart", "c", [[0.0, 0.0, 0.1, 0.1]])
    write_image(src / "hands", "d", [])
    (src / "synth_info.json").write_text("{}")  # not a sidecar: no image beside it
    counts = layout_by_cell(src, dst)
    assert counts == {
        "fanart/cell_r0c0": 1,
        "hands/noface": 1,
        "screenshots/1_character/cell_r2c2": 2,
    }
    assert (dst / "screenshots/1_character/cell_r2c2/b.json").is_file()
    assert cell_histogram(counts) == {"cell_r0c0": 1, "cell_r2c2": 2, "noface": 1}
    write_image(src / "fanart", "e", centre)  # after the layout was recorded: not relaid
    assert layout_by_cell(src, dst) == counts
