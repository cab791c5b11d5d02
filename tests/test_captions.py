"""ASP captions: parts, order, grid tokens, spellings, dropout, configs and the CLI."""

import io
import json
import random
import tarfile
from dataclasses import replace

import pytest

from ymn.data.caption_tokens import CUT_MARK, cut_position, mark_cut, token_counts
from ymn.data.captions import (
    GRID_TOKENS,
    CaptionConfig,
    build_caption,
    control_token_report,
    control_tokens,
    count_token,
    face_grid_tokens,
    grid_cell,
    load_caption_config,
    main,
    order_tags,
)
from ymn.data.metadata import normalize_metadata
from ymn.paths import CONFIG_DIR

CONF = CONFIG_DIR / "caption"

# The metadata example of the ASP README (Dec 2022) and the caption ASP builds from it.
README_EXAMPLE = {
    "count": "2",
    "characters": ["KuraueHinata", "AobaKokona"],
    "general": "anishot yamaS2EP04",
    "facepos": [
        [0.22447916666666667, 0.42592592592592593, 0.3927083333333333, 0.7083333333333334],
        [0.6296875, 0.15185185185185185, 0.7520833333333333, 0.3712962962962963],
    ],
    "tags": "long_hair looking_at_viewer blush short_hair open_mouth multiple_girls skirt "
    "brown_hair shirt black_hair hair_ornament red_eyes 2girls twintails purple_eyes braid "
    "pantyhose outdoors hairclip bag sunlight backpack braided_bangs".split(),
}
ALL_PARTS = CaptionConfig(keep_copyright=1.0, tag_shuffle=False, dropout=0.0)


def box_at(cx: float, cy: float, half: float = 0.0) -> list[float]:
    return [cx - half, cy - half, cx + half, cy + half]


def test_readme_example_caption():
    meta = normalize_metadata(README_EXAMPLE, "README")
    caption = build_caption(meta, ALL_PARTS, random.Random(0), dropout=False)
    assert caption.startswith(
        "2people, KuraueHinata AobaKokona, anishot yamaS2EP04, fhml fvmd fhmr fvmt, "
        "multiple girls, 2girls, long hair, looking at viewer, blush, short hair"
    )
    tags = caption.split(", ")[4:]
    assert len(tags) == 15 and "_" not in caption


@pytest.mark.parametrize("grid_size", [5, 3])
def test_grid_cell_boundaries(grid_size):
    for k in range(1, grid_size):
        cut = k / grid_size
        assert grid_cell(box_at(cut, 0.5), grid_size)[0] == k  # exactly on a cut: next cell
        assert grid_cell(box_at(cut - 1e-9, 0.5), grid_size)[0] == k - 1
        assert grid_cell(box_at(cut + 1e-9, 0.5), grid_size)[0] == k
        assert grid_cell(box_at(0.5, cut), grid_size)[1] == k
        assert grid_cell(box_at(0.5, cut - 1e-9), grid_size)[1] == k - 1
    assert grid_cell(box_at(-0.1, 1.2), grid_size) == (0, grid_size - 1)


def test_asp_grid_tokens_at_the_cuts():
    assert face_grid_tokens([box_at(0.1999, 0.1999, 0.05)]) == "fhll fvtp"
    assert face_grid_tokens([box_at(0.2, 0.2, 0.05)]) == "fhml fvmt"
    assert face_grid_tokens([box_at(0.4, 0.6)]) == "fhmd fvmb"
    assert face_grid_tokens([box_at(0.8, 0.8)]) == "fhri fvbt"
    two = face_grid_tokens([box_at(0.5, 0.5), box_at(0.7, 0.3)])
    assert two == "fhmd fvmd fhmr fvmt"


def test_other_grids_have_their_own_tokens():
    assert face_grid_tokens([box_at(0.1, 0.9)], "asp3") == "fhlt fvdn"
    assert face_grid_tokens([box_at(0.5, 0.5)], "asp3") == "fhce fvce"
    assert face_grid_tokens([box_at(0.1, 0.1)], "words5") == "leftmost top"
    assert face_grid_tokens([box_at(0.5, 0.7)], "words5") == "center lower"
    asp5 = {t for h, v in [GRID_TOKENS["asp5"]] for t in (*h, *v)}
    asp3 = {t for h, v in [GRID_TOKENS["asp3"]] for t in (*h, *v)}
    assert not asp5 & asp3
    with pytest.raises(ValueError, match="unknown grid"):
        face_grid_tokens([box_at(0.5, 0.5)], "asp7")


@pytest.mark.parametrize(
    ("n", "asp", "words"),
    [
        (0, "0people", "zero people"),
        (1, "1person", "one person"),
        (3, "3people", "three people"),
        (5, "5people", "five people"),
        ("many", "manypeople", "many people"),
        (42, "42people", "42 people"),
    ],
)
def test_count_spellings(n, asp, words):
    assert count_token(n, "asp") == asp
    assert count_token(n, "words") == words


def test_count_token_rejects_bad_values():
    for bad in (-1, "six", True):
        with pytest.raises(ValueError):
            count_token(bad)


def test_count_position_variants():
    meta = normalize_metadata(README_EXAMPLE, "README")
    rng = random.Random(0)
    last = build_caption(meta, replace(ALL_PARTS, count_position="last"), rng, dropout=False)
    absent = build_caption(meta, replace(ALL_PARTS, count_position="absent"), rng, dropout=False)
    words = build_caption(meta, replace(ALL_PARTS, count_spelling="words"), rng, dropout=False)
    assert last.endswith(", 2people") and not last.startswith("2people")
    assert "people" not in absent and absent.startswith("KuraueHinata AobaKokona, ")
    assert words.startswith("two people, KuraueHinata")


def test_tag_order_cut_and_shuffle():
    tags = [f"t{i}" for i in range(20)] + ["solo", "1girl", "red_eyes", "long_hair", "1boy"]
    cfg = CaptionConfig(tag_shuffle=False, max_tags=6)
    assert order_tags(tags, cfg, random.Random(0)) == ["solo", "1girl", "1boy", "t0", "t1", "t2"]
    dropped = order_tags(
        tags, replace(cfg, drop_hair_tags=True, drop_eye_tags=True, max_tags=0), random.Random(0)
    )
    assert "red_eyes" not in dropped and "long_hair" not in dropped and len(dropped) == 23
    shuffled = order_tags(tags, replace(cfg, tag_shuffle=True, max_tags=0), random.Random(1))
    assert shuffled[:3] == ["solo", "1girl", "1boy"]
    assert shuffled[3:] != order_tags(tags, replace(cfg, max_tags=0), random.Random(1))[3:]
    assert sorted(shuffled) == sorted(tags)


def test_parts_filters_and_underscores():
    meta = normalize_metadata(
        {
            "n_people": 1,
            "characters": ["unknown", "Yukimura_Aoi", "ood"],
            "copyright": ["yama_no_susume"],
            "artist": ["anonymous", "some_artist"],
            "rating": "explicit",
            "tags": ["open_mouth"],
        },
        "s",
    )
    caption = build_caption(meta, ALL_PARTS, random.Random(0), dropout=False)
    assert caption == (
        "1person, Yukimura Aoi, from yama no susume, by some artist, explicit, open mouth"
    )
    no_copyright = build_caption(meta, replace(ALL_PARTS, keep_copyright=0.0), random.Random(0))
    assert "from " not in no_copyright


def test_dropout_frequency_and_caption_only():
    meta = normalize_metadata(README_EXAMPLE, "README")
    rng = random.Random(123)
    cfg = CaptionConfig(dropout=0.15)
    captions = [build_caption(meta, cfg, rng) for _ in range(4000)]
    rate = sum(c == " " for c in captions) / len(captions)
    assert 0.13 < rate < 0.17
    assert all(c == " " or c.startswith("2people") for c in captions)
    assert all(build_caption(meta, cfg, rng, dropout=False) != " " for _ in range(200))
    only = {"caption": "a_girl", "n_people": None}
    assert build_caption(only, replace(cfg, dropout=0.0), rng) == "a_girl"
    assert build_caption(only, replace(cfg, dropout=1.0), rng) == " "


def test_part_keep_probability():
    meta = normalize_metadata(README_EXAMPLE, "README")
    cfg = replace(ALL_PARTS, keep_facepos=0.5)
    rng = random.Random(7)
    kept = sum("fhml" in build_caption(meta, cfg, rng) for _ in range(2000)) / 2000
    assert 0.45 < kept < 0.55


def test_config_files_load_and_instantiate():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    names = {p.stem for p in CONF.glob("*.yaml")}
    expected = {"asp", "phase2", "short", "count_last", "count_absent", "count_words", "grid3"}
    assert expected | {"grid_words"} <= names
    for path in CONF.glob("*.yaml"):
        cfg = load_caption_config(path)
        assert instantiate(OmegaConf.load(path)) == cfg
    short = load_caption_config(CONF / "short.yaml")
    meta = normalize_metadata(README_EXAMPLE, "README")
    caption = build_caption(meta, short, random.Random(0), dropout=False)
    assert caption == "2people, KuraueHinata AobaKokona, fhml fvmd fhmr fvmt"
    assert load_caption_config(CONF / "asp.yaml") == CaptionConfig()


def test_look_tags_dropped_for_named_scenes_only_keeps_unnamed_peoples_colours():
    """`look_tags_dropped_for="named"`: a roster character's colour tags go (its name carries
    them), a regularization person's stay, so an untagged hair colour is always a name's."""
    tags = ["1girl", "solo", "red_hair", "twintails", "green_eyes", "smile"]
    named = normalize_metadata({"n_people": 1, "characters": ["SaitoMio"], "tags": tags}, "a")
    unnamed = normalize_metadata({"n_people": 1, "characters": ["unknown"], "tags": tags}, "b")
    drops = CaptionConfig(drop_hair_tags=True, drop_eye_tags=True, tag_shuffle=False)

    def caption(meta, cfg):
        return build_caption(meta, cfg, random.Random(0), dropout=False)

    for meta in (named, unnamed):  # "all" (the default): every scene loses them
        assert not {"red hair", "twintails", "green eyes"} & set(caption(meta, drops).split(", "))
    only_named = replace(drops, look_tags_dropped_for="named")
    assert caption(named, only_named) == caption(named, drops)
    assert {"red hair", "twintails", "green eyes", "smile"} <= set(
        caption(unnamed, only_named).split(", ")
    )
    no_drops = replace(only_named, drop_hair_tags=False, drop_eye_tags=False)
    assert "red hair" in caption(named, no_drops)  # the setting only narrows the drops
    with pytest.raises(ValueError, match="look_tags_dropped_for"):
        CaptionConfig(look_tags_dropped_for="roster")


def test_bad_config_values():
    with pytest.raises(ValueError, match="keep_tags"):
        CaptionConfig(keep_tags=1.5)
    with pytest.raises(ValueError, match="grid"):
        CaptionConfig(grid="asp7")


def test_cli_json_folder_and_shard(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text(json.dumps(README_EXAMPLE))
    (tmp_path / "d" / "a.png").write_bytes(b"")
    (tmp_path / "d" / "b_x.png").write_bytes(b"")
    flags = ["--all-parts", "--no-shuffle", "--no-dropout", "--no-report", "--no-tokens"]
    assert main([str(tmp_path / "d" / "a.json"), *flags]) == 0
    name, caption = capsys.readouterr().out.strip().split("\t")
    assert name.endswith("a.json") and "fhml fvmd fhmr fvmt" in caption
    assert caption.startswith("2people, KuraueHinata AobaKokona")

    assert main([str(tmp_path / "d"), *flags]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines][1] == "b"  # caption-only: filename up to _

    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, data in [("s0", README_EXAMPLE), ("s1", {"n_people": "many"})]:
            payload = json.dumps(data).encode()
            info = tarfile.TarInfo(f"{key}.json")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    assert main([str(shard), *flags]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1] == f"{shard}:s1\tmanypeople"


def test_cli_reports_malformed_json(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{")
    assert main([str(tmp_path / "bad.json"), "--no-report"]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_control_token_report_with_clip_tokenizer():
    tokenizer_module = pytest.importorskip(
        "ymn.data.tokenizer", reason="ymn.data.tokenizer (load_clip_tokenizer) not written yet"
    )
    report = control_token_report(tokenizer_module.load_clip_tokenizer())
    lines = report.splitlines()[1:]
    assert [line.split()[0] for line in lines] == control_tokens()
    one = next(line for line in lines if line.split()[0] == "1person")
    assert one.split("->")[1].split("|")[0].strip() == "1</w>"  # digits: separate CLIP words
    # every grid token is `fh`/`fv` + one piece, as ASP's own are (asp3 was spelt for that)
    for grid in ("asp5", "asp3"):
        horizontal, vertical = GRID_TOKENS[grid]
        for token in (*horizontal, *vertical):
            line = next(x for x in lines if x.split()[0] == token)
            assert line.split("->")[1].split("(")[0].split("|")[0].strip() == token[:2]
            assert "(2 pieces)" in line


def test_cli_counts_tokens_and_marks_the_cut(tmp_path, capsys):
    long_meta = dict(README_EXAMPLE, tags=[f"tag{i}_long_word" for i in range(40)])
    (tmp_path / "long.json").write_text(json.dumps(long_meta))
    (tmp_path / "short.json").write_text(json.dumps({"n_people": 1}))
    flags = ["--all-parts", "--no-shuffle", "--no-dropout", "--no-report"]
    assert main([str(tmp_path / "short.json"), *flags]) == 0
    name, caption, count = capsys.readouterr().out.strip().split("\t")
    assert (caption, count) == ("1person", "4/77 tokens")  # start, 1, person, end
    assert CUT_MARK.strip() not in caption

    assert main([str(tmp_path / "long.json"), *flags]) == 0
    name, marked, count = capsys.readouterr().out.strip().split("\t")
    kept, lost = marked.split(CUT_MARK)
    assert kept.startswith("2people") and lost.endswith("tag14 long word")  # 15 tags kept
    n_tokens = int(count.split("/")[0])
    assert n_tokens > 77 and f"({n_tokens - 77} lost after" in count


def test_cut_falls_after_the_last_word_clip_keeps():
    tokenizer = pytest.importorskip("ymn.data.tokenizer").load_clip_tokenizer()
    caption = ", ".join(f"tag{i} word" for i in range(40))
    cut = cut_position(tokenizer, caption)
    assert cut is not None and caption[cut:].startswith(" tag")
    kept, next_word = caption[:cut], caption[: cut + len(" tag")]
    assert token_counts(tokenizer, [kept]) == [77]  # everything before the mark survives
    assert token_counts(tokenizer, [next_word])[0] > 77  # the next word does not
    assert cut_position(tokenizer, "1person, fhml fvmd") is None
    assert mark_cut(tokenizer, "1person") == ("1person", 4)
