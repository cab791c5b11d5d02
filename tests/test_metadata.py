"""ASP metadata variants → the contract's normalised dict."""

import json
from pathlib import Path

import pytest

from ymn.data.metadata import MetadataError, load_metadata, normalize_metadata

# Jan-2023 example of the ASP README (detect_faces + augment_metadata + classify_characters).
JAN2023 = {
    "n_faces": 2,
    "facepos": [
        [0.1, 0.4935185185185185, 0.2984375, 0.8481481481481481],
        [0.5494791666666666, 0.25555555555555554, 0.7578125, 0.6472222222222223],
    ],
    "fh_ratio": 0.39166666666666666,
    "cropped": False,
    "general": "aniscreen",
    "tags": ["1girl", "long_hair", "1boy", "upper_body"],
    "n_people": 2,
    "characters": ["AobaKokona", "SasaharaYuka"],
}


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_jan2023_sidecar(tmp_path):
    write(tmp_path / "a.json", {**JAN2023, "copyright": ["yama_no_susume"], "artist": ["x", "y"]})
    meta = load_metadata(tmp_path / "a.png")
    assert meta["n_people"] == 2 and meta["n_faces"] == 2
    assert meta["facepos"] == JAN2023["facepos"]
    assert meta["characters"] == ["AobaKokona", "SasaharaYuka"]
    assert meta["copyright"] == "yama_no_susume" and meta["artist"] == "x y"
    assert meta["rating"] is None and meta["caption"] is None


def test_many_people_and_string_counts_and_unknown_copyright():
    meta = normalize_metadata({"n_people": "many", "copyright": ["unknown"]}, "s")
    assert meta["n_people"] == "many" and meta["copyright"] is None
    assert normalize_metadata({"count": "3"}, "s")["n_people"] == 3
    assert normalize_metadata({"n_people": 0}, "s")["n_people"] == 0
    assert normalize_metadata({}, "s")["n_people"] is None


def test_extra_keys_pass_through():
    meta = normalize_metadata({**JAN2023, "multiply": 2.5, "size": [640, 480]}, "s")
    assert meta["multiply"] == 2.5 and meta["size"] == [640, 480]


def test_dec2022_count_and_facedata(tmp_path):
    rel = [[0.5, 0.1, 0.7, 0.4], [0.1, 0.2, 0.3, 0.5]]
    facedata = {
        "n_faces": 2,
        "abs_pos": [[960, 108, 1344, 432], [192, 216, 576, 540]],
        "rel_pos": rel,
        "max_height_ratio": 0.3,
        "characters": ["AobaKokona", "KuraueHinata"],
        "cropped": False,
        "n_people": 3,
    }
    write(tmp_path / "b.facedata.json", facedata)
    write(tmp_path / "b.json", {"count": 2, "characters": ["AobaKokona"], "general": "anishot"})
    meta = load_metadata(tmp_path / "b.png")
    assert meta["n_people"] == 2  # the sidecar's count, not the face data's n_people
    assert meta["facepos"] == rel and meta["n_faces"] == 2
    assert meta["fh_ratio"] == pytest.approx(0.3)
    assert meta["characters"] == ["AobaKokona"] and meta["general"] == "anishot"
    assert not {"count", "rel_pos", "abs_pos", "max_height_ratio"} & set(meta)


def test_dec2022_facedata_alone(tmp_path):
    write(tmp_path / "c.facedata.json", {"n_faces": 1, "rel_pos": [[0, 0, 0.5, 0.5]]})
    meta = load_metadata(tmp_path / "c.jpg")
    assert meta["facepos"] == [[0.0, 0.0, 0.5, 0.5]]
    assert meta["fh_ratio"] == pytest.approx(0.5)  # derived from the box when absent


def test_dec2022_legacy_facepos_strings():
    meta = normalize_metadata({"count": "1", "facepos": ["fvp 10 40 fhp 20 35"]}, "s")
    assert meta["facepos"] == [pytest.approx([0.20, 0.10, 0.35, 0.40])]
    with pytest.raises(MetadataError, match="fvp TOP BOTTOM"):
        normalize_metadata({"facepos": ["fhp 10 40 fvp 20 35"]}, "s")


def test_caption_only_txt_caption_and_filename(tmp_path):
    write(tmp_path / "x_1.txt", "a girl on a mountain\n")
    write(tmp_path / "y_2.caption", "two girls")
    assert load_metadata(tmp_path / "x_1.png")["caption"] == "a girl on a mountain"
    assert load_metadata(tmp_path / "y_2.png")["caption"] == "two girls"
    meta = load_metadata(tmp_path / "KuraueHinata_0001_b.png")
    assert meta["caption"] == "KuraueHinata"
    assert meta["n_people"] is None and meta["facepos"] == [] and meta["tags"] == []


def test_malformed_json_names_the_file(tmp_path):
    bad = write(tmp_path / "bad.json", "{not json")
    with pytest.raises(MetadataError, match=str(bad)):
        load_metadata(tmp_path / "bad.png")
    write(tmp_path / "list.json", "[1, 2]")
    with pytest.raises(MetadataError, match="list.json"):
        load_metadata(tmp_path / "list.png")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"n_people": -1}, "n_people"),
        ({"n_people": "lots"}, "n_people"),
        ({"facepos": [[0.1, 0.2, 0.3]]}, "facepos"),
        ({"tags": [1, 2]}, "tags"),
        ({"cropped": "no"}, "cropped"),
        ({"fh_ratio": "big"}, "fh_ratio"),
    ],
)
def test_bad_values_name_source_and_key(tmp_path, raw, key):
    write(tmp_path / "v.json", raw)
    with pytest.raises(MetadataError) as err:
        load_metadata(tmp_path / "v.png")
    assert "v.json" in str(err.value) and key in str(err.value)
