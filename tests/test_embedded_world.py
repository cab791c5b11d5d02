"""The embedded-world benchmark runs end to end (random tiny model, tiny n) and reports rates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.bench.embedded_world import (
    FLAG_KEYS,
    fresh_scenes,
    look_parts,
    one_person_flags,
    run,
    run_vae_only,
)
from tests.conftest import mixed_look_image, train_tiny_base
from ymn.data.synthetic import CHARACTERS


def test_benchmark_reports_every_target_with_n_and_ci(tiny_model, tmp_path):
    result = run(str(tiny_model), n_vae=3, n_samples=2, steps=2, cfg=5.0, out_dir=tmp_path)
    for key in ("vae_count_kept", "vae_identity_kept", "one_person_described", "one_face"):
        assert {"value", "n", "ci95"} <= set(result[key]), key
    assert result["one_person_described"]["n"] == 2
    by_character = result["one_person_described_by_character"]
    assert sum(reading["n"] for reading in by_character.values()) == 2
    assert set(by_character) <= set(CHARACTERS)
    assert set(result["met"]) == set(result["targets"])
    assert not result["met"]["one_person_described"]  # a random model draws no one
    parts = result["one_face_look_parts"]
    assert parts["one_face"] == result["one_face"]["k"] == sum(parts.values()) - parts["one_face"]
    assert (tmp_path / "embedded_world.png").is_file()
    assert result["caption_reliance"]["share_removed"]["n"] == 2


def test_look_parts_split_the_one_face_samples_by_which_half_of_the_look_they_show():
    """The benchmark's random model draws no single face, so its parts are all zero there;
    here chosen flags: samples 0–4 one face (hair+outfit, hair, outfit, neither, hair+outfit),
    sample 5 two faces whose flags must not count."""
    flags = {
        "one_face": np.array([1, 1, 1, 1, 1, 0], bool),
        "one_face_hair": np.array([1, 1, 0, 0, 1, 1], bool),
        "one_face_outfit": np.array([1, 0, 1, 0, 1, 1], bool),
    }
    assert look_parts(flags) == {
        "one_face": 5,
        "hair_and_outfit": 2,
        "hair_only": 1,
        "outfit_only": 1,
        "neither": 1,
    }


def test_one_person_flags_split_the_look_into_the_named_hair_and_the_implied_outfit():
    scenes = fresh_scenes(4, one_person=True)
    truth = one_person_flags([image for image, _ in scenes], [meta for _, meta in scenes])
    assert set(truth) == set(FLAG_KEYS)
    assert all(values.all() for values in truth.values())  # ground truth shows every part
    mixed = mixed_look_image("SaitoMio", "KonoRina", [0.35, 0.3, 0.65, 0.6])
    flags = one_person_flags([mixed], [{"characters": ["SaitoMio"]}])
    assert flags["one_face"][0] and flags["one_face_hair"][0]
    assert not flags["one_face_outfit"][0]
    both = {**truth, "one_face": truth["one_face"] & [True, True, True, False]}
    parts = look_parts({key: np.concatenate([both[key], flags[key]]) for key in FLAG_KEYS})
    assert parts == {
        "one_face": 4,
        "hair_and_outfit": 3,
        "hair_only": 1,
        "outfit_only": 0,
        "neither": 0,
    }


def test_stage1_checkpoint_is_measured_while_it_trains(tmp_path):
    flags = ["--images", "4", "--vae-steps", "2", "--vae-batch", "2", "--stage", "vae"]
    flags += ["--decoder-steps", "0"]
    assert train_tiny_base([*flags, "--work", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    for reading in ("stage1_eval_step2.json", "stage1b_vs_stage1.json"):  # readings beside it
        (tmp_path / reading).write_text('{"vae_count_kept": {}}')
    result = run_vae_only(tmp_path, n_vae=3)
    assert result["stage1_step"] == 2 and result["vae_count_kept"]["n"] == 3
    assert "stage1b_step" not in result
    decoder = ["--decoder-steps", "1", "--decoder-batch", "2"]  # replaces the 0 above
    out = str(tmp_path / "o")
    assert train_tiny_base([*flags, *decoder, "--work", str(tmp_path), "--out", out]) == 0
    compared = run_vae_only(tmp_path, n_vae=3, against=tmp_path)
    assert compared["stage1b_step"] == compared["against"]["stage1b_step"] == 1
    assert compared["difference"]["count"]["difference"] == 0.0
    assert compared["difference"]["count"]["p_permutation"] == 1.0
    colour = ["--colour-steps", "1"]  # stage 1d, read with the stages before it
    assert train_tiny_base([*flags, *decoder, *colour, "--work", str(tmp_path), "--out", out]) == 0
    assert run_vae_only(tmp_path, n_vae=3)["stage1d_step"] == 1
    looks = run_vae_only(tmp_path, n_vae=3, n_look=2, first=1)["vae_look_ceiling"]
    assert looks["first_prompt"] == 1 and looks["one_person_described"]["n"] == 2


def test_stage2_checkpoint_is_sampled_on_the_base_it_trains_on(tmp_path):
    from safetensors.torch import load_file

    from experiments.bench.embedded_world import run_stage2
    from ymn.model.components import load_components
    from ymn.model.tiny_base import load_stage2_weights

    out = tmp_path / "out"
    flags = ["--images", "4", "--vae-steps", "2", "--vae-batch", "2", "--unet-steps", "3"]
    flags += ["--decoder-steps", "0"]
    flags += ["--batch", "2", "--work", str(tmp_path), "--out", str(out)]
    assert train_tiny_base(flags) == 0
    components = load_components("tiny", pretrained=str(out))
    for parameter in components.unet.parameters():
        parameter.data.zero_()
    assert load_stage2_weights(components, tmp_path) == 3
    saved = load_file(tmp_path / "stage2_unet.safetensors")
    for name, value in components.unet.state_dict().items():
        assert value.float().equal(saved[f"module.unet.{name}"].to(value.dtype).float()), name
    result = run_stage2(str(out), tmp_path, n_samples=2, steps=2, cfg=5.0)
    assert result["stage2_step"] == 3 and result["one_person_described"]["n"] == 2
    assert result["caption_reliance"]["share_removed"]["n"] == 2  # the key `run` writes too
    compared = run_stage2(str(out), tmp_path, n_samples=2, steps=2, cfg=5.0, against=tmp_path)
    json.dumps(compared)  # no arrays left in the payload
    assert set(compared["difference"]) == {*FLAG_KEYS, "caption_share_removed"}
    record = compared["per_sample"]
    assert record["prompt"] == [0, 1] and len(record["character"]) == 2
    assert all(len(record[key]) == 2 for key in (*FLAG_KEYS, "caption_share_removed"))
    assert record["one_person_described"] == [
        int(hit) for hit in compared["against"]["per_sample"]["one_person_described"]
    ]
    for reading in compared["difference"].values():  # a checkpoint against itself, paired
        assert reading["difference"] == 0.0 and reading["p_permutation"] == 1.0
        assert reading["n_images"] == 2
    finished = run_stage2(str(out), tmp_path, n_samples=2, steps=2, cfg=5.0, against=out)
    assert finished["against"]["stage2_step"] == 3  # the saved base, read from its folder
    for reading in finished["difference"].values():  # same prompts and seeds, paired
        assert reading["n_images"] == 2


def test_caption_reliance_is_zero_exactly_when_the_unet_ignores_text(tiny_components):
    import torch

    from experiments.bench.embedded_world import caption_reliance

    listening = caption_reliance(tiny_components, n=3)
    assert listening["share_removed"]["value"] != 0.0
    by_timestep = listening["share_removed_by_timestep"]
    assert list(by_timestep) == ["100", "400", "700", "900"]
    assert any(value != 0.0 for value in by_timestep.values())
    for name, module in tiny_components.unet.named_modules():
        if name.endswith("attn2"):  # cross-attention: the only path from the text
            torch.nn.init.zeros_(module.to_v.weight)
    deaf = caption_reliance(tiny_components, n=3)
    assert deaf["share_removed"]["value"] == 0.0 and deaf["share_removed"]["ci95"] == [0.0, 0.0]
    assert set(deaf["share_removed_by_timestep"].values()) == {0.0}


def test_sampler_settings_are_read_paired_with_the_benchmarks_setting(
    tiny_model, tmp_path, monkeypatch
):
    import experiments.bench.base_sampler as base_sampler
    from experiments.bench.base_sampler import REFERENCE, main

    # every sampler and guidance of the default list, at 2 steps (the steps are not read here)
    short = tuple((name, 2, cfg, rescale) for name, _, cfg, rescale in base_sampler.SETTINGS[1:])
    monkeypatch.setattr(base_sampler, "SETTINGS", (REFERENCE, *short))
    out = tmp_path / "sampler.json"
    assert main(["--model", str(tiny_model), "--n-samples", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert str(tmp_path) not in out.read_text() and str(tiny_model) not in out.read_text()
    assert result["model"] == tiny_model.name  # the folder's name, never a local path
    keys = ("sampler", "steps", "guidance_scale", "guidance_rescale")
    read = [tuple(s[k] for k in keys) for s in result["settings"]]
    assert read == [REFERENCE, *short]
    for setting, key in zip(result["settings"], read, strict=True):
        assert setting["one_person_described"]["n"] == 2
        paired = setting.get("minus_reference")
        if key == REFERENCE:
            assert paired is None
        else:
            assert paired["one_face"]["n_images"] == 2


@pytest.mark.parametrize("sampler", ["euler_a", "ddpm"])
def test_a_stochastic_samplers_image_depends_on_its_own_seed_not_its_batch(
    tiny_components, sampler
):
    from experiments.bench.embedded_world import sample

    prompt = "1girl, solo, red hair"
    batch = sample(tiny_components, [prompt] * 3, [5, 6, 7], 3, 2.0, scheduler=sampler)
    alone = sample(tiny_components, [prompt], [6], 3, 2.0, scheduler=sampler)
    pixels = [np.asarray(image, dtype=np.int16) for image in (*batch, *alone)]
    assert np.abs(pixels[1] - pixels[3]).max() <= 1  # batched matmuls may round apart
    assert np.abs(pixels[0] - pixels[1]).max() > 10  # another seed, another image


def test_cfg_rescale_reaches_the_sampler_and_an_unknown_sampler_is_refused(tiny_components):
    from experiments.bench.embedded_world import sample

    args = (tiny_components, ["1girl, solo, red hair"], [3], 3, 4.0)
    plain, rescaled = (sample(*args, guidance_rescale=r)[0] for r in (0.0, 0.7))
    assert np.abs(np.asarray(plain, np.int16) - np.asarray(rescaled, np.int16)).max() > 0
    with pytest.raises(ValueError, match="sampler 'heun'"):
        sample(*args, scheduler="heun")


@pytest.mark.parametrize("settings", ["heun,25,5,0", "ddim,25,5", "ddim,many,5,0"])
def test_a_malformed_sampler_setting_is_refused_before_anything_loads(settings, capsys):
    from experiments.bench.base_sampler import main, parse_settings

    with pytest.raises(SystemExit):
        main(["--settings", settings])  # argparse exits before the base loads
    assert "--settings" in capsys.readouterr().err
    assert parse_settings("euler_a,25,5,0;ddim,50,7.5,0.7") == (
        ("euler_a", 25, 5.0, 0.0),
        ("ddim", 50, 7.5, 0.7),
    )


def test_a_stage2_reading_of_the_average_loads_it_and_a_finished_base_refuses_it(tmp_path):
    import os

    import torch

    from experiments.bench.embedded_world import run_stage2

    out = tmp_path / "out"
    flags = ["--images", "4", "--vae-steps", "1", "--vae-batch", "2", "--unet-steps", "3"]
    flags += ["--decoder-steps", "0", "--colour-steps", "0", "--text-steps", "0"]
    flags += ["--batch", "2", "--ema-decay", "0.9", "--work", str(tmp_path), "--out", str(out)]
    assert train_tiny_base(flags) == 0
    threads = torch.get_num_threads()
    try:
        compared = run_stage2(
            str(out), tmp_path, 2, 2, 5.0, against=tmp_path, average=True, threads=2, first=1
        )
        reading_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert reading_threads == min(2, os.cpu_count() or 1)  # --threads reaches torch
    assert compared["average"] is True and compared["stage2_step"] == 3
    assert compared["first_prompt"] == 1 and compared["one_face"]["n"] == 2
    shares = compared["caption_reliance"]["share_removed"]["value"]
    trained = compared["against"]["caption_reliance"]["share_removed"]["value"]
    assert shares != trained  # two different sets of weights on the same scenes and noise
    with pytest.raises(ValueError, match="finished base"):
        run_stage2(str(out), out, n_samples=2, steps=2, cfg=5.0, average=True)


def test_fresh_scenes_after_a_skip_are_the_next_ones_of_the_same_sequence():
    from experiments.bench.embedded_world import fresh_scenes

    for one_person in (True, False):
        whole = [meta for _, meta in fresh_scenes(5, one_person=one_person)]
        later = [meta for _, meta in fresh_scenes(3, one_person=one_person, skip=2)]
        assert later == whole[2:]


def stage2_reading_record(
    prompts: list[int], described: list[int], steps: int = 25, characters: list[str] | None = None
) -> dict:
    """A saved `--stage2` arm as `pair_readings` reads it, with chosen per-sample flags."""
    from experiments.bench.embedded_world import FLAG_KEYS

    n = len(prompts)
    flags = {key: [1] * n for key in FLAG_KEYS} | {"one_person_described": described}
    record = {"prompt": prompts, "character": characters or ["SaitoMio"] * n, **flags}
    record["caption_share_removed"] = [0.1] * n
    return {"sampler": {"scheduler": "DDIM", "steps": steps}, "per_sample": record}


def test_saved_readings_on_the_same_prompts_pair_and_others_are_refused(tmp_path, capsys):
    from experiments.bench.embedded_world import interaction_of_readings, main, pair_readings

    before = stage2_reading_record([5, 6, 7, 8], [0, 0, 1, 0])
    after = stage2_reading_record([5, 6, 7, 8], [1, 1, 1, 0])
    paired = pair_readings(before, after)
    assert paired["one_person_described"]["difference"] == 0.5
    assert paired["one_face"]["difference"] == 0.0 and paired["one_face"]["n_images"] == 4
    with pytest.raises(ValueError, match="same prompts"):
        pair_readings(before, stage2_reading_record([1, 2, 3, 4], [1, 1, 1, 0]))
    with pytest.raises(ValueError, match="other samplers"):
        pair_readings(before, stage2_reading_record([5, 6, 7, 8], [1, 1, 1, 0], steps=50))
    saved = tmp_path / "reading.json"
    saved.write_text(json.dumps({**after, "against": before}))
    assert main(["--pair", f"{saved}:against", str(saved)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["one_person_described"]["difference"] == 0.5
    assert main(["--interaction", *[f"{saved}:against", str(saved)] * 2]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["b_minus_a"]["one_person_described"]["difference"] == 0.5
    assert printed["interaction"]["one_person_described"]["interaction"] == 0.0
    with pytest.raises(ValueError, match="same prompts"):
        other_prompts = stage2_reading_record([1, 2, 3, 4], [1, 1, 1, 0])
        interaction_of_readings(before, after, before, other_prompts)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"sampler": {}}))
    with pytest.raises(ValueError, match="no per-sample record"):
        main(["--pair", str(old), str(saved)])
    with pytest.raises(ValueError, match="only be 'against'"):
        main(["--pair", f"{saved}:other", str(saved)])


def test_a_base_trained_on_look_tags_is_prompted_with_them_on_the_same_scenes(
    tmp_path, monkeypatch
):
    """A stage-2 reading prompts a base with the tag set it was trained on (its work folder's
    record, or a saved base's train_info), on the same scenes and seeds as any other base, so
    readings of bases trained on either tag set stay paired."""
    import experiments.bench.embedded_world as embedded_world

    plain = fresh_scenes(3, one_person=True)
    described = fresh_scenes(3, one_person=True, caption_tags="look")
    for (image, meta), (same_image, look_meta) in zip(plain, described, strict=True):
        assert image.tobytes() == same_image.tobytes()
        assert meta["characters"] == look_meta["characters"]
        assert not any(t.endswith(" shirt") for t in meta["tags"])
        assert any(t.endswith(" shirt") for t in look_meta["tags"])
    prompted: list[str] = []
    original = embedded_world.sample

    def recording(components, prompts, *args, **kwargs):
        prompted.extend(prompts)
        return original(components, prompts, *args, **kwargs)

    monkeypatch.setattr(embedded_world, "sample", recording)
    out, work = tmp_path / "out", tmp_path / "work"
    flags = ["--images", "4", "--vae-steps", "2", "--vae-batch", "2", "--unet-steps", "2"]
    flags += ["--batch", "2", "--caption-tags", "look", "--work", str(work), "--out", str(out)]
    assert train_tiny_base(flags) == 0
    result = embedded_world.run_stage2(str(out), work, 2, steps=2, cfg=5.0, against=out)
    assert result["caption_tags"] == result["against"]["caption_tags"] == "look"
    assert len(prompted) == 8 and all(" shirt" in prompt for prompt in prompted)
    assert prompted[:2] == [", ".join(meta["tags"]) for _, meta in described[:2]]


def _recording_scene_tags(monkeypatch, module) -> list[str]:
    """Patch `module.fresh_scenes` to note the tag set of every call; returns the notes."""
    asked: list[str] = []
    original = module.fresh_scenes

    def recording(*args, caption_tags: str = "hair", **kwargs):
        asked.append(caption_tags)
        return original(*args, caption_tags=caption_tags, **kwargs)

    monkeypatch.setattr(module, "fresh_scenes", recording)
    return asked


def test_colour_leak_and_base_sampler_prompt_a_base_with_its_recorded_tag_set(
    tiny_model, tmp_path, monkeypatch
):
    import shutil

    import experiments.bench.base_sampler as base_sampler
    import experiments.bench.colour_leak as colour_leak
    from ymn.model.tiny_base_data import record_caption_tags

    look_base = tmp_path / "look-base"
    shutil.copytree(tiny_model, look_base)
    record_caption_tags(look_base, "look")
    monkeypatch.setattr(base_sampler, "SETTINGS", (base_sampler.REFERENCE,))  # one setting
    for module, flags in (
        (colour_leak, ["--n", "1"]),
        (base_sampler, ["--n-samples", "1", "--out", str(tmp_path / "s.json")]),
    ):
        asked = _recording_scene_tags(monkeypatch, module)
        assert module.main(["--model", str(tiny_model), *flags]) == 0
        assert module.main(["--model", str(look_base), *flags]) == 0
        assert asked == ["hair", "look"], module.__name__
    assert json.loads((tmp_path / "s.json").read_text())["caption_tags"] == "look"


def test_the_look_ceiling_reads_the_prompts_own_scenes_through_the_vae(monkeypatch):
    import experiments.bench.embedded_world as embedded_world

    scenes = fresh_scenes(6, one_person=True)
    monkeypatch.setattr(embedded_world, "round_trip", lambda vae, images: list(images))
    exact = embedded_world.look_ceiling(None, scenes)
    assert exact["one_person_described"]["k"] == 6
    names = {meta["characters"][0] for _, meta in scenes}
    assert set(exact["by_character"]) == names
    assert sum(entry["n"] for entry in exact["by_character"].values()) == 6

    def grey(vae, images):
        return [image.convert("L").convert("RGB") for image in images]  # the colours gone

    monkeypatch.setattr(embedded_world, "round_trip", grey)
    assert embedded_world.look_ceiling(None, scenes)["one_person_described"]["k"] == 0


def test_the_look_is_paired_within_the_common_and_the_rarer_looks(tmp_path, capsys):
    from experiments.bench.embedded_world import look_by_casting, main

    # SaitoMio and OnoHaru are cast 4 and 3 times as often as Tamaki and Natsume (weight 1)
    cast = ["SaitoMio", "OnoHaru", "Tamaki", "Natsume", "Tamaki", "SaitoMio"]
    before = stage2_reading_record(list(range(6)), [1, 1, 0, 0, 0, 0], characters=cast)
    after = stage2_reading_record(list(range(6)), [0, 1, 1, 1, 1, 1], characters=cast)
    groups = look_by_casting(before, after)
    assert groups["common"]["prompts"] == 3 and groups["rarer"]["prompts"] == 3
    assert (groups["common"]["a"], groups["common"]["b"]) == (2, 2)
    assert (groups["common"]["rose"], groups["common"]["fell"]) == (1, 1)
    assert (groups["rarer"]["a"], groups["rarer"]["b"], groups["rarer"]["rose"]) == (0, 3, 3)
    assert groups["rarer"]["sign_test_p"] == 0.25  # 3 of 3 rose: 2 x 1/8
    assert groups["rarer"]["difference"]["difference"] == 1.0
    assert groups["common"]["difference"]["difference"] == 0.0
    assert set(groups["rarer"]["characters"]) == {"IdaSaki", "UedaFumi", "Tamaki", "Natsume"}
    saved = tmp_path / "reading.json"
    saved.write_text(json.dumps({**after, "against": before}))
    assert main(["--pair", f"{saved}:against", str(saved)]) == 0
    assert json.loads(capsys.readouterr().out)["look_by_casting"] == json.loads(json.dumps(groups))
