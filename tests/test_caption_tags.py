"""Tag-level caption controls: fixed first parts, part shuffle, protected tag dropout, prefix."""

import json
import random

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ymn.data.caption_tags import apply_tag_controls, is_control_part, split_parts
from ymn.data.captions import GRID_TOKENS, NUMBER_WORDS, CaptionConfig, build_caption, main
from ymn.data.metadata import normalize_metadata
from ymn.paths import CONFIG_DIR

META = normalize_metadata(
    {
        "n_people": 3,
        "characters": ["SaitoMio", "KonoRina", "Asuka_Ai"],
        "general": "anishot",
        "facepos": [[0.1, 0.1, 0.2, 0.2], [0.4, 0.4, 0.6, 0.6], [0.8, 0.8, 0.9, 0.9]],
        "tags": "long_hair skirt smile outdoors sky cloud tree school_uniform bag hat".split(),
    },
    "test",
)
NAMES = "SaitoMio KonoRina Asuka Ai"
GRID = "fhll fvtp fhmd fvmd fhri fvbt"


def caption(seed: int, **controls) -> str:
    cfg = CaptionConfig(dropout=0.0, **controls)
    return build_caption(META, cfg, random.Random(seed))


def test_defaults_reproduce_todays_captions_and_rng_draws():
    """The new keys at their defaults change no caption and draw nothing more from the rng."""
    legacy = CaptionConfig()
    explicit = CaptionConfig(
        fixed_first=3, shuffle_parts=False, tag_dropout=0.0, protected_tags=("x",), prefix=""
    )
    for seed in range(20):
        a, b = random.Random(seed), random.Random(seed)
        assert build_caption(META, legacy, a) == build_caption(META, explicit, b)
        assert a.random() == b.random()  # the stream's next crop/flip draw is unchanged
    free = {"caption": "a free caption,  with odd , spacing"}
    assert build_caption(free, explicit, random.Random(0), dropout=False) == free["caption"]


def test_keep_first_k_invariant():
    for seed in range(30):
        parts = split_parts(caption(seed, fixed_first=2, shuffle_parts=True, tag_dropout=0.5))
        assert parts[:2] == ["3people", NAMES]
    draws = [caption(s, fixed_first=2, shuffle_parts=True) for s in range(10)]
    shuffled = {tuple(split_parts(text)) for text in draws}
    assert len(shuffled) > 1  # the rest does move
    everything = sorted(split_parts(caption(0, fixed_first=2, shuffle_parts=False)))
    assert all(sorted(p) == everything for p in shuffled)  # shuffled, nothing lost


def test_protected_tags_are_never_dropped():
    for seed in range(30):
        parts = split_parts(caption(seed, tag_dropout=0.7, protected_tags=("school_uniform",)))
        assert {"3people", NAMES, GRID, "school uniform"} <= set(parts)
    parts = split_parts(caption(0, tag_dropout=1.0, protected_tags=("school_uniform",)))
    assert parts == ["3people", NAMES, GRID, "school uniform"]  # every other part dropped


def test_protected_names_one_per_part_and_control_tokens():
    grid_words = [*GRID_TOKENS["asp5"][0], *GRID_TOKENS["asp5"][1]]
    text = "2people, SaitoMio, KonoRina, fhll fvtp fhri fvbt, smile, hat"
    meta = {"characters": ["SaitoMio", "KonoRina"]}
    out = apply_tag_controls(
        text, meta, random.Random(0), fixed_first=0, shuffle_parts=False, tag_dropout=1.0,
        protected_tags=(), prefix="", number_words=NUMBER_WORDS, grid_words=grid_words,
    )  # fmt: skip
    assert out == "2people, SaitoMio, KonoRina, fhll fvtp fhri fvbt"
    assert is_control_part("three people", NUMBER_WORDS, grid_words)
    assert is_control_part("manypeople", NUMBER_WORDS, grid_words)
    assert not is_control_part("fhll smile", NUMBER_WORDS, grid_words)


def test_same_seed_same_caption():
    controls = {"fixed_first": 1, "shuffle_parts": True, "tag_dropout": 0.3, "prefix": "anime"}
    for seed in range(10):
        assert caption(seed, **controls) == caption(seed, **controls)
    assert len({caption(s, **controls) for s in range(10)}) > 1


def test_prefix_first_and_dropout_caption_untouched():
    text = caption(0, prefix="masterpiece, best_quality", fixed_first=1, shuffle_parts=True)
    assert split_parts(text)[:3] == ["masterpiece", "best quality", "3people"]
    cfg = CaptionConfig(dropout=1.0, prefix="masterpiece")
    assert build_caption(META, cfg, random.Random(0)) == " "


def test_no_tag_dropout_without_dropout_flag():
    cfg = CaptionConfig(dropout=0.0, tag_dropout=1.0)
    full = build_caption(META, CaptionConfig(dropout=0.0), random.Random(3), dropout=False)
    assert build_caption(META, cfg, random.Random(3), dropout=False) == full


def test_config_validation():
    with pytest.raises(ValueError, match="tag_dropout"):
        CaptionConfig(tag_dropout=1.5)
    with pytest.raises(ValueError, match="fixed_first"):
        CaptionConfig(fixed_first=-1)


def test_hydra_caption_group_sets_the_controls():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "caption.fixed_first=2",
                "caption.tag_dropout=0.2",
                "caption.protected_tags=[smile]",
                "caption.prefix=anime",
            ],
        )
    built = instantiate(cfg.caption)  # as the data module gets it: OmegaConf list included
    assert (built.fixed_first, built.tag_dropout, built.protected_tags, built.prefix) == (
        2,
        0.2,
        ("smile",),
        "anime",
    )


def test_cli_shows_the_effect_for_a_seed(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({**META, "tags": list(META["tags"])}))
    args = [str(path), "--no-report", "--no-tokens", "--no-dropout", "--seed", "5", "--draws", "3"]
    args += ["--set", "fixed_first=2", "--set", "shuffle_parts=true", "--set", "tag_dropout=0.5"]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 3 and all(line.split("\t")[1].startswith("3people, ") for line in first)
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == first  # same seed, same captions
    with pytest.raises(SystemExit):
        main([str(path), "--set", "no_such_key=1"])
