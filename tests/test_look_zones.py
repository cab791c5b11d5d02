"""look_zones: each zone's owner and the look with and without the unnamed veto."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from PIL import Image

from experiments.bench.embedded_world import fresh_scenes
from experiments.bench.look_zones import UNNAMED, main, read_zones, tabulate
from tests.conftest import look_image
from ymn.data.synthetic import CHARACTERS, UNKNOWN_HAIR
from ymn.model.tiny_base_data import CAPTION_TAGS
from ymn.probes.detectors import SyntheticFaceDetector

BOX = [0.35, 0.3, 0.65, 0.6]


def test_renders_read_as_their_character_and_an_unnamed_brown_only_without_the_veto():
    detector = SyntheticFaceDetector()
    for image, meta in fresh_scenes(4, one_person=True):
        name = meta["characters"][0]
        reading = read_zones(image, name, detector)
        assert reading["faces"] == 1 and reading["described"]
        assert (reading["hair_zone"], reading["outfit_zone"]) == (name, name)
    brown = next(colour for colour, tag in UNKNOWN_HAIR if tag == "brown hair")
    natsume_in_unnamed_brown = look_image(replace(CHARACTERS["Natsume"], hair=brown), BOX)
    reading = read_zones(natsume_in_unnamed_brown, "Natsume", detector)
    assert (reading["hair_zone"], reading["outfit_zone"]) == (UNNAMED, "Natsume")
    assert not reading["described"] and reading["described_without_veto"]
    blank = read_zones(Image.new("RGB", (128, 128), (140, 200, 245)), "Natsume", detector)
    assert blank == {"character": "Natsume", "faces": 0}


def test_the_table_counts_each_character_over_all_its_prompts():
    def one_face(name: str, hair: str | None, described: bool, without: bool) -> dict:
        return {
            "character": name,
            "faces": 1,
            "hair_zone": hair,
            "outfit_zone": name,
            "described": described,
            "described_without_veto": without,
        }

    readings = [
        one_face("Natsume", UNNAMED, False, True),
        one_face("Natsume", "Natsume", True, True),
        {"character": "Natsume", "faces": 3},
        one_face("Tamaki", None, False, False),
    ]
    table = tabulate(readings)
    natsume = table["Natsume"]
    assert (natsume["prompts"], natsume["one_face"]) == (3, 2)
    assert natsume["described"]["k"] == 1 and natsume["described"]["n"] == 3
    assert natsume["described_without_veto"]["k"] == 2
    assert natsume["hair_zone"] == {UNNAMED: 1, "Natsume": 1}
    assert table["Tamaki"]["hair_zone"] == {"null": 1}
    assert table["all"]["prompts"] == 4 and table["all"]["described"]["k"] == 1


def test_a_base_is_read_on_the_chosen_characters_prompts(tiny_model, capsys):
    argv = ["--stage2", str(tiny_model), "--n-samples", "6", "--first-prompt", "0"]
    assert main([*argv, "--characters", "SaitoMio", "KonoRina"]) == 0
    result = json.loads(capsys.readouterr().out)
    asked = {"SaitoMio", "KonoRina"}
    scenes = fresh_scenes(6, one_person=True)
    chosen = [i for i, (_, meta) in enumerate(scenes) if meta["characters"][0] in asked]
    assert chosen and [sample["prompt"] for sample in result["per_sample"]] == chosen
    assert {sample["character"] for sample in result["per_sample"]} <= asked
    assert result["by_character"]["all"]["prompts"] == len(chosen)


def test_a_sheet_pairs_each_characters_scenes_with_their_samples(tiny_model, tmp_path, capsys):
    from experiments.bench.look_zones import pairs_by_character

    sheet = tmp_path / "sheet.png"
    argv = ["--stage2", str(tiny_model), "--n-samples", "8", "--first-prompt", "0"]
    assert main([*argv, "--characters", "SaitoMio", "Natsume", "--sheet", str(sheet)]) == 0
    drawn = json.loads(capsys.readouterr().out)["per_sample"]
    scenes = fresh_scenes(8, one_person=True)
    with Image.open(sheet) as picture:
        rows = len({s["character"] for s in drawn})
        widest = max(sum(s["character"] == name for s in drawn) for name in ("SaitoMio", "Natsume"))
        assert picture.size == (2 * min(widest, 4) * 128, rows * 128)
    samples = [Image.new("RGB", (128, 128), (i, 0, 0)) for i in range(len(scenes))]
    asked = ["Natsume", "SaitoMio", "Tamaki", "IdaSaki"]
    rows = pairs_by_character(scenes, samples, asked, per_row=2)
    present = [name for name in asked if any(m["characters"] == [name] for _, m in scenes)]
    assert [name for name, _ in rows] == present  # no empty rows
    for name, images in rows:
        own = [i for i, (_, meta) in enumerate(scenes) if meta["characters"][0] == name][:2]
        assert images[0::2] == [scenes[i][0] for i in own]
        assert images[1::2] == [samples[i] for i in own]


def test_hair_tag_owners_count_the_base_scenes_people_and_the_shared_brown():
    from experiments.bench.look_zones import hair_tag_owners
    from ymn.model.tiny_base_data import synthetic_scene

    n = 300
    tags = hair_tag_owners(n_images=n)["tags"]
    assert set(tags["brown hair"]["people"]) == {"Natsume", UNNAMED}
    drawn = [synthetic_scene(0, index, 128)[1] for index in range(n)]
    for name, look in CHARACTERS.items():
        owners = tags[look.hair_tag]
        if look.hair_tag != "brown hair":
            assert set(owners["people"]) == {name}
        assert owners["people"][name] == sum(meta["characters"].count(name) for meta in drawn)
        solo = sum(meta["characters"] == [name] for meta in drawn)
        assert owners["solo"][name] == solo


def test_under_the_distinct_hair_tags_the_brown_tag_and_natsumes_caption_are_hers_alone(capsys):
    from experiments.bench.look_zones import hair_tag_owners

    n = 300
    hair, distinct = (
        hair_tag_owners(n_images=n),
        hair_tag_owners(n_images=n, caption_tags="distinct-hair"),
    )
    assert distinct["caption_tags"] == "distinct-hair"
    assert set(distinct["tags"]["brown hair"]["people"]) == {"Natsume"}
    assert (
        distinct["tags"]["brown hair"]["people"]["Natsume"]
        == hair["tags"]["brown hair"]["people"]["Natsume"]
    )
    assert hair["solo_person_tags"]["Natsume"]["owners"][UNNAMED] > 0
    assert set(distinct["solo_person_tags"]["Natsume"]["owners"]) == {"Natsume"}
    assert main(["--owners", "--caption-tags", "distinct-hair"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["tags"]["brown hair"]["people"]) == {"Natsume"}


@pytest.mark.parametrize("caption_tags", CAPTION_TAGS)
def test_each_persons_captioned_hair_tag_is_in_the_scenes_caption(caption_tags):
    from ymn.model.tiny_base_data import captioned_hair_tag, scene_spec, synthetic_scene

    renamed = 0
    for index in range(120):
        people = scene_spec(0, index, 128).people
        tags = synthetic_scene(0, index, 128, caption_tags=caption_tags)[1]["tags"]
        for person in people:
            hair_tag = captioned_hair_tag(person.look, caption_tags)
            assert hair_tag in tags
            renamed += hair_tag != person.look.hair_tag
    assert (renamed > 0) == (caption_tags != "hair")


def test_the_solo_person_tags_count_who_each_roster_caption_could_mean(capsys):
    from experiments.bench.look_zones import hair_tag_owners, person_tags
    from ymn.model.tiny_base_data import synthetic_scene

    n = 300
    described = hair_tag_owners(n_images=n)["solo_person_tags"]
    assert set(described) == set(CHARACTERS)
    counted = {name: entry["tags"] for name, entry in described.items()}
    assert counted["Natsume"] == "brown hair, twintails, 1girl"
    drawn = [synthetic_scene(0, index, 128)[1] for index in range(n)]
    for name, look in CHARACTERS.items():
        solo_captions = [m["tags"] for m in drawn if m["characters"] == [name]]
        assert all(set(person_tags(look).split(", ")) <= set(t) for t in solo_captions)
        assert described[name]["owners"].get(name, 0) == len(solo_captions)
    roster_people = [set(person_tags(look).split(", ")) for look in CHARACTERS.values()]
    unnamed = sum(entry["owners"].get(UNNAMED, 0) for entry in described.values())
    assert unnamed > 0  # the brown-haired girls with twintails
    assert unnamed == sum(
        m["characters"] == ["unknown"] and any(tags <= set(m["tags"]) for tags in roster_people)
        for m in drawn
    )
    assert main(["--owners"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["scenes"] == 4096 and set(printed["solo_person_tags"]) == set(CHARACTERS)
