"""embedded_world: can the embedded tiny base draw what the probes measure?

On synthetic scenes from a seed the base never saw (it trained on seed 0):
1. VAE round trip (posterior mode, `experiments.probes.vae_ceiling`): share of images whose
   detected face count equals the truth (target ≥ 0.98) and share of faces whose
   `identify_character` answer survives (≥ 0.95);
2. the base prompted with a fresh one-person scene's own generic tags: share of samples with
   exactly one face, of the described character (target ≥ 0.80); multi-person scenes: count
   error of the samples; and how much the caption lowers the denoising loss of fresh scenes
   (`caption_reliance`: near 0 means the base does not listen to its text); and the same
   one-person reading on the prompts' own scenes through the VAE (`vae_look_ceiling`, per
   character: what a base that drew each described scene exactly would score);
3. `embedded_world.png`: the base's samples next to the training-style images they describe.

    python -m experiments.bench.embedded_world [--model DIR] [--n-vae 200] [--n-samples 100]
    python -m experiments.bench.embedded_world --stage2 WORK   # a UNet mid-training: 2. only
    python -m experiments.bench.embedded_world --stage2 WORK --against WORK0   # paired
    python -m experiments.bench.embedded_world --stage2 WORK --against ymn/assets/tiny-base
    python -m experiments.bench.embedded_world --stage2 WORK --average --against WORK
        # a run's moving average of its weights (tiny_base --ema-decay) against its weights
    python -m experiments.bench.embedded_world --pair A.json B.json:against
        # two saved --stage2 readings on the same prompts, paired afterwards (B − A), and the
        # look paired within the common and the rarer looks (look_by_casting)
    python -m experiments.bench.embedded_world --interaction A.json B.json C.json D.json
        # does A → B do as much as C → D? (D − C) − (B − A), paired on the same prompts
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
)
from PIL import Image

from experiments.bench.common import BENCH_DIR, setup_torch, write_result
from experiments.probes.vae_ceiling import FRESH_SEED, round_trip, vae_round_trip_agreement
from ymn.data.synthetic import CHARACTER_WEIGHTS, CHARACTERS
from ymn.model.components import (
    Components,
    components_pipeline,
    load_components,
    tiny_base_path,
)
from ymn.model.tiny_base_data import base_caption_tags, synthetic_scene
from ymn.probes.detectors import SyntheticFaceDetector
from ymn.probes.identity import character_of, look_shares, zone_characters
from ymn.probes.rates import rate

SIZE = 128
BATCH = 16  # images per pipeline call and per VAE round trip (one generator per image)
TARGETS = {"vae_count_kept": 0.98, "vae_identity_kept": 0.95, "one_person_described": 0.80}
FLAG_KEYS = ("one_face", "one_person_described", "one_face_hair", "one_face_outfit")
LOOK = "one_person_described"
PAIRED_READINGS = (*FLAG_KEYS, "caption_share_removed")  # what `--pair` compares per prompt
SAMPLER_STEPS, GUIDANCE = 25, 5.0  # DDIM steps and CFG scale of every reading
SAMPLERS = {  # what `sample` may sample with; each takes the base's schedule from its config
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}


def fresh_scenes(
    n: int, *, one_person: bool, offset: int = 0, skip: int = 0, caption_tags: str = "hair"
) -> list[tuple[Image.Image, dict]]:
    """n fresh-seed scenes (only one-person scenes of a roster character when one_person),
    after the first `skip` such scenes, tagged with the base's tag set `caption_tags` (the
    scenes themselves do not depend on it)."""
    scenes, index = [], offset
    while len(scenes) < skip + n:
        image, meta = synthetic_scene(FRESH_SEED, index, SIZE, caption_tags=caption_tags)
        index += 1
        named_solo = meta["n_people"] == 1 and meta["characters"][0] in CHARACTERS
        if meta["n_people"] >= 1 and (named_solo or not one_person):
            scenes.append((image.convert("RGB"), meta))
    return scenes[skip:]


def sample(
    components: Components,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    cfg: float,
    *,
    scheduler: str = "ddim",
    guidance_rescale: float = 0.0,
) -> list[Image.Image]:
    """One image per (prompt, seed), in batches of `BATCH` with one generator per image (the
    stochastic samplers draw their step noise from it too), with the sampler `scheduler` (a
    key of SAMPLERS) and CFG rescaled by `guidance_rescale` (Lin et al. 2023; 0 = plain CFG)."""
    if scheduler not in SAMPLERS:
        raise ValueError(f"sampler {scheduler!r}: expected one of {sorted(SAMPLERS)}")
    sampler = SAMPLERS[scheduler].from_config(components.scheduler.config)
    pipe = components_pipeline(components, sampler)
    pipe.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    for start in range(0, len(prompts), BATCH):
        chunk = slice(start, start + BATCH)
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        out = pipe(
            prompts[chunk],
            num_inference_steps=steps,
            guidance_scale=cfg,
            guidance_rescale=guidance_rescale,
            generator=generators,
            height=SIZE,
            width=SIZE,
        )
        images += out.images
    return images


def one_person_flags(samples: list[Image.Image], metas: list[dict]) -> dict[str, np.ndarray]:
    """Per sample: exactly one face (`one_face`), and that face shows the scene's character
    (`one_person_described`); apart, its hair zone shows the character's hair colour
    (`one_face_hair`, the colour the tags name) and its outfit zone the character's outfit
    colour (`one_face_outfit`, which no tag names: the base must have tied it to the hair)."""
    detector = SyntheticFaceDetector()
    flags: dict[str, list[bool]] = {key: [] for key in FLAG_KEYS}
    for image, meta in zip(samples, metas, strict=True):
        boxes = detector.detect(image)
        name = meta["characters"][0]
        shares = look_shares(image, boxes[0]) if len(boxes) == 1 else None
        hair, outfit = zone_characters(shares) if shares is not None else (None, None)
        flags["one_face"].append(len(boxes) == 1)
        flags["one_person_described"].append(shares is not None and character_of(shares) == name)
        flags["one_face_hair"].append(hair == name)
        flags["one_face_outfit"].append(outfit == name)
    return {key: np.array(values) for key, values in flags.items()}


def one_person_readings(flags: dict[str, np.ndarray]) -> dict[str, Any]:
    """The rates (Wilson CI) of `one_person_flags`."""
    return {name: rate(int(hits.sum()), len(hits)) for name, hits in flags.items()}


def look_parts(flags: dict[str, np.ndarray]) -> dict[str, int]:
    """Among one-face samples, how many show the named hair and the implied outfit, one of
    them, or neither (which half of the look a base misses)."""
    one = flags["one_face"]
    hair, outfit = flags["one_face_hair"][one], flags["one_face_outfit"][one]
    return {
        "one_face": int(one.sum()),
        "hair_and_outfit": int((hair & outfit).sum()),
        "hair_only": int((hair & ~outfit).sum()),
        "outfit_only": int((~hair & outfit).sum()),
        "neither": int((~hair & ~outfit).sum()),
    }


def described_by_character(
    flags: dict[str, np.ndarray], metas: list[dict]
) -> dict[str, dict[str, Any]]:
    """`one_person_described` per prompted character (which looks the base cannot draw)."""
    by_name: dict[str, list[bool]] = {}
    for hit, meta in zip(flags["one_person_described"], metas, strict=True):
        by_name.setdefault(meta["characters"][0], []).append(bool(hit))
    return {name: rate(sum(hits), len(hits)) for name, hits in sorted(by_name.items())}


@torch.no_grad()
def look_ceiling(vae: AutoencoderKL, scenes: list[tuple[Image.Image, dict]]) -> dict[str, Any]:
    """The one-person reading on the prompts' own scenes through `vae`'s round trip: what a
    base that drew each prompt's scene exactly would score, overall and per character."""
    images, metas = [image for image, _ in scenes], [meta for _, meta in scenes]
    decoded = [
        out
        for start in range(0, len(images), BATCH)
        for out in round_trip(vae, images[start : start + BATCH])
    ]
    flags = one_person_flags(decoded, metas)
    return {
        "one_person_described": one_person_readings(flags)["one_person_described"],
        "by_character": described_by_character(flags, metas),
    }


def count_error(samples: list[Image.Image], metas: list[dict]) -> dict[str, Any]:
    """Per true count: mean detected count and exact share."""
    detector = SyntheticFaceDetector()
    by_count: dict[int, list[int]] = {}
    for image, meta in zip(samples, metas, strict=True):
        by_count.setdefault(meta["n_people"], []).append(len(detector.detect(image)))
    return {
        str(k): {
            "n": len(v),
            "mean_detected": float(np.mean(v)),
            "exact": rate(sum(d == k for d in v), len(v)),
        }
        for k, v in sorted(by_count.items())
    }


@torch.no_grad()
def scene_latents(components: Components, scenes: list[tuple[Image.Image, dict]]) -> torch.Tensor:
    """Scaled posterior-mode latents of the scenes' images (no sampling: no RNG drawn)."""
    from ymn.model.vae_training import to_pixels

    pixels = torch.stack([torch.from_numpy(np.array(image)) for image, _ in scenes])
    latents = components.vae.encode(to_pixels(pixels.permute(0, 3, 1, 2))).latent_dist.mode()
    return latents * components.vae.config.scaling_factor


def own_tags(meta: dict) -> str:
    """A scene's generic tags as the base's caption (no shuffle, no dropout)."""
    return ", ".join(meta["tags"])


def picture(rows: list[tuple[str, list[Image.Image]]], path: Path) -> Path:
    """Rows of images (training-style scenes, samples) in one PNG, 128 px cells."""
    width = max(len(images) for _, images in rows)
    sheet = Image.new("RGB", (width * SIZE, len(rows) * SIZE), "white")
    for r, (_, images) in enumerate(rows):
        for c, image in enumerate(images):
            sheet.paste(image.resize((SIZE, SIZE)), (c * SIZE, r * SIZE))
    sheet.save(path)
    return path


def stage_steps(work: Path) -> dict[str, int]:
    """The step each VAE stage of a `ymn.model.tiny_base` --work folder has reached."""
    from ymn.model.vae_stages import VAE_STAGES

    records = {stage: Path(work) / f"{name}.json" for stage, name in VAE_STAGES.items()}
    return {
        f"{stage}_step": int(json.loads(path.read_text())["step"])
        for stage, path in records.items()
        if path.is_file()
    }


def run_vae_only(
    work: Path, n_vae: int, against: Path | None = None, n_look: int = 0, first: int = 0
) -> dict[str, Any]:
    """The VAE round trip of a stage-1 checkpoint of `ymn.model.tiny_base` (training progress);
    with `against`, that folder's VAE on the same images too and the paired difference; with
    `n_look`, also `look_ceiling` on the fresh one-person prompts `first` to `first + n_look`."""
    from experiments.probes.vae_ceiling import paired_difference
    from ymn.model.vae_stages import load_stage1_vae

    setup_torch()

    def reading(folder: Path) -> tuple[dict[str, Any], Any]:
        vae = load_stage1_vae(folder)
        ceiling = vae_round_trip_agreement(vae, n_vae, FRESH_SEED, SIZE, per_image=True)
        kept = {
            "vae_count_kept": ceiling["count_kept"],
            "vae_identity_kept": ceiling["identity_kept"],
        }
        if n_look:
            solo = fresh_scenes(n_look, one_person=True, skip=first)
            kept["vae_look_ceiling"] = {"first_prompt": first, **look_ceiling(vae, solo)}
        return {**stage_steps(folder), **kept}, ceiling["per_image"]

    result, images = reading(work)
    result = {"fresh_seed": FRESH_SEED, **result}
    if against is not None:
        result["against"], against_images = reading(against)
        result["difference"] = paired_difference(against_images, images)
    return result


def run_stage2(
    model: str | None,
    work: Path,
    n_samples: int,
    steps: int,
    cfg: float,
    against: Path | None = None,
    average: bool = False,
    threads: int = 1,
    first: int = 0,
) -> dict:
    """Measurement 2 for the text encoder + UNet of a stage-2 checkpoint of
    `ymn.model.tiny_base` on top of `model` (its VAE and latent scale are stage 1's), or with
    `average` for the checkpoint's moving average of them; with `against`, that folder's
    checkpoint (its trained weights) on the same prompts, seeds and noise too, and the paired
    difference (work − against) of each per-sample reading. The committed readings used one
    thread; more are faster and may change a sample's last bits, so a borderline flag.
    `first` skips that many fresh prompts (and seeds, and reliance scenes), so a reading can
    extend an earlier one with prompts it has not seen."""
    setup_torch(threads)
    result = stage2_reading(model, work, n_samples, steps, cfg, average, first)
    result.update(average=average, first_prompt=first)
    result = {"fresh_seed": FRESH_SEED, **result}
    if against is not None:
        result["against"] = stage2_reading(model, against, n_samples, steps, cfg, first=first)
        result["difference"] = pair_readings(result["against"], result)
    return result


def pair_readings(
    a: dict[str, Any],
    b: dict[str, Any],
    prompts: np.ndarray | None = None,
    names: tuple[str, ...] = PAIRED_READINGS,
) -> dict[str, dict[str, Any]]:
    """b − a of the per-sample readings `names` of two stage-2 readings (bootstrap CI,
    permutation p), from the `per_sample` records they keep; `prompts` (a mask) keeps a subset."""
    from experiments.probes.vae_ceiling import paired_difference

    check_paired(a, b)
    return paired_difference(
        paired_values(a["per_sample"], prompts, names),
        paired_values(b["per_sample"], prompts, names),
    )


def look_by_casting(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """b − a of the described look on the prompts of the looks the base's scenes cast most
    (`common`: casting weight 3 or 4) and least (`rarer`: 1 or 2): the counts, the prompts
    whose look rose and fell, an exact sign test on those, and the paired difference."""
    from scipy.stats import binomtest

    check_paired(a, b)  # before the masks index b's records
    weights = dict(zip(CHARACTERS, CHARACTER_WEIGHTS, strict=True))
    characters = a["per_sample"]["character"]
    groups = {}
    for group, cast in (("common", lambda w: w >= 3), ("rarer", lambda w: w < 3)):
        chosen = np.array([cast(weights[name]) for name in characters])
        before, after = (paired_values(r["per_sample"], chosen, (LOOK,))[LOOK][0] for r in (a, b))
        rose, fell = int(np.sum(after > before)), int(np.sum(after < before))
        groups[group] = {
            "characters": sorted(name for name in CHARACTERS if cast(weights[name])),
            "prompts": int(chosen.sum()),
            "a": int(before.sum()),
            "b": int(after.sum()),
            "rose": rose,
            "fell": fell,
            "sign_test_p": binomtest(rose, rose + fell).pvalue if rose + fell else 1.0,
            "difference": pair_readings(a, b, chosen, (LOOK,))[LOOK],
        }
    return groups


def interaction_of_readings(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any], d: dict[str, Any]
) -> dict[str, Any]:
    """Does a change do as much in another setting? b − a, d − c and (d − c) − (b − a) of every
    per-sample reading of four stage-2 readings (e.g. 3,400 and 6,800 steps at two widths)."""
    from experiments.probes.vae_ceiling import paired_interaction

    check_paired(a, b, c, d)
    values = [paired_values(reading["per_sample"]) for reading in (a, b, c, d)]
    return {
        "b_minus_a": pair_readings(a, b),
        "d_minus_c": pair_readings(c, d),
        "interaction": paired_interaction(*values),
    }


def check_paired(*readings: dict[str, Any]) -> None:
    """Refuses readings not made on the same fresh prompts, seeds and sampler, which is what
    makes them paired."""
    first = readings[0]
    for other in readings[1:]:
        for key in ("prompt", "character"):
            if first["per_sample"][key] != other["per_sample"][key]:
                raise ValueError(f"the readings were not made on the same prompts ({key} differs)")
        if first["sampler"] != other["sampler"]:
            raise ValueError(
                f"the readings used other samplers: {first['sampler']}, {other['sampler']}"
            )


def saved_reading(spec: str) -> dict[str, Any]:
    """A reading saved from `--stage2`'s output: `FILE` for its first arm, `FILE:against` for
    the arm it was read against."""
    path, _, arm = spec.partition(":")
    if arm not in ("", "against"):
        raise ValueError(f"{spec}: the arm after ':' can only be 'against'")
    reading = json.loads(Path(path).read_text())
    reading = reading[arm] if arm else reading
    if "per_sample" not in reading:
        raise ValueError(f"{spec} keeps no per-sample record (read before --pair existed)")
    return reading


def paired_values(
    record: dict[str, list],
    prompts: np.ndarray | None = None,
    names: tuple[str, ...] = PAIRED_READINGS,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A `per_sample` record as `paired_difference` reads it: (hits, totals) per reading, on the
    prompts of the mask `prompts` (default: all)."""
    values = {name: np.array(record[name], float) for name in names}
    if prompts is not None:
        values = {name: hits[prompts] for name, hits in values.items()}
    return {name: (hits, np.ones(len(hits))) for name, hits in values.items()}


def stage2_reading(
    model: str | None,
    work: Path,
    n_samples: int,
    steps: int,
    cfg: float,
    average: bool = False,
    first: int = 0,
) -> dict[str, Any]:
    """One stage-2 checkpoint's readings (with `average`, of its moving average), with a
    `per_sample` record: per fresh prompt (its index, which is also its seed, and the prompted
    character) each flag of `one_person_flags` as 0/1 and the scene's caption share, so that
    readings of other runs on the same prompts can be paired later (`--pair`). `work` may also
    be a finished base (a diffusers folder, e.g. the shipped one), read whole."""
    components, step = stage2_components(model, work, average)
    tags = base_caption_tags(work)
    readings, _ = sample_readings(components, n_samples, steps, cfg, first, tags)
    reliance = caption_reliance(components, n_samples, first=first, caption_tags=tags)
    flags, prompted = readings.pop("per_sample"), readings.pop("prompted_characters")
    per_sample: dict[str, list] = {
        "prompt": list(range(first, first + n_samples)),
        "character": prompted,
        **{name: [int(hit) for hit in hits] for name, hits in flags.items()},
        "caption_share_removed": [float(share) for share in reliance.pop("per_scene")],
    }
    readings.update(caption_reliance=reliance, per_sample=per_sample)
    return {"stage2_step": step, "caption_tags": tags, **readings}


def stage2_components(
    model: str | None, work: Path, average: bool = False
) -> tuple[Components, int | None]:
    """The components a stage-2 reading samples (in eval mode), and their stage-2 step: a
    `tiny_base --work` folder's text encoder and UNet (with `average`, their moving average) on
    `model`'s VAE, or a finished base (a diffusers folder, e.g. the shipped one) whole."""
    from ymn.model.tiny_base import load_stage2_weights

    finished = (Path(work) / "model_index.json").is_file()
    if finished and average:
        raise ValueError(f"{work} is a finished base: --average reads a --work folder")
    if finished:
        components = load_components("tiny", pretrained=str(work))
        step = finished_base_steps(Path(work))
    else:
        components = load_components("tiny", pretrained=model)
        step = load_stage2_weights(components, work, average)
    eval_mode(components)
    return components, step


def eval_mode(components: Components) -> None:
    """Put the VAE, text encoder and UNet in eval mode (readings sample)."""
    for module in (components.vae, components.text_encoder, components.unet):
        module.eval()


def finished_base_steps(folder: Path) -> int | None:
    """The stage-2 steps a saved base was trained for (its train_info.json), if recorded."""
    info = folder / "train_info.json"
    if not info.is_file():
        return None
    steps = json.loads(info.read_text()).get("config", {}).get("unet-steps")
    return None if steps is None else int(steps)


RELIANCE_TIMESTEPS = (100, 400, 700, 900)


def caption_reliance(
    components: Components, n: int, seed: int = 0, first: int = 0, caption_tags: str = "hair"
) -> dict[str, Any]:
    """How much the base listens to its caption: per fresh scene, the denoising loss with its
    own tags, with another scene's tags and with no caption (same noise, timesteps
    `RELIANCE_TIMESTEPS`); `share_removed` = 1 - own / empty, mean over scenes with a
    bootstrap 95 % CI. 0 means the text changes nothing; a base that draws the described look
    must remove a clear share (colours are a small part of the image, so expect percents).
    `per_scene` holds each scene's share (an array, for paired comparisons)."""
    from ymn.data.tokenizer import tokenize
    from ymn.model.module import DiffusionModule

    module = DiffusionModule(components, optimizer=torch.optim.AdamW).eval()
    scenes = fresh_scenes(
        n, one_person=False, offset=200_000, skip=first, caption_tags=caption_tags
    )
    own = [own_tags(meta) for _, meta in scenes]
    captions = {"own": own, "other": own[1:] + own[:1], "empty": [""] * n}
    token_ids = {name: tokenize(module.tokenizer, texts) for name, texts in captions.items()}
    z = scene_latents(components, scenes)
    generator = torch.Generator().manual_seed(seed)
    losses = {name: torch.zeros(n) for name in captions}
    by_timestep = {}
    with torch.no_grad():
        for t in RELIANCE_TIMESTEPS:
            noise = torch.randn(z.shape, generator=generator)
            timesteps = torch.full((n,), t)
            at_t = {
                name: module.diffusion_loss(z, ids, noise, timesteps)
                for name, ids in token_ids.items()
            }
            for name, loss in at_t.items():
                losses[name] += loss / len(RELIANCE_TIMESTEPS)
            by_timestep[str(t)] = float((1 - at_t["own"] / at_t["empty"]).mean())
    removed = (1 - losses["own"] / losses["empty"]).numpy()
    draws = np.random.default_rng(seed).integers(0, n, (2000, n))
    low, high = np.percentile(removed[draws].mean(axis=1), [2.5, 97.5])
    return {
        "share_removed": {
            "value": float(removed.mean()),
            "n": n,
            "ci95": [float(low), float(high)],
            "ci_method": "bootstrap over scenes",
        },
        "share_removed_by_timestep": by_timestep,
        "mean_loss": {name: float(value.mean()) for name, value in losses.items()},
        "timesteps": list(RELIANCE_TIMESTEPS),
        "per_scene": removed,
    }


def sample_readings(
    components: Components,
    n_samples: int,
    steps: int,
    cfg: float,
    first: int = 0,
    caption_tags: str = "hair",
) -> tuple[dict[str, Any], list[tuple[str, list[Image.Image]]]]:
    """Measurement 2 (one-person readings, multi-person count error) and rows for the picture,
    on the fresh prompts (and seeds) `first` to `first + n_samples`, prompted with the tag set
    `caption_tags` the base was trained on."""
    eval_mode(components)
    solo = fresh_scenes(n_samples, one_person=True, skip=first, caption_tags=caption_tags)
    solo_metas = [meta for _, meta in solo]
    seeds = list(range(first, first + n_samples))
    solo_samples = sample(components, [own_tags(m) for m in solo_metas], seeds, steps, cfg)
    flags = one_person_flags(solo_samples, solo_metas)
    result: dict[str, Any] = {**one_person_readings(flags), "per_sample": flags}
    result["prompted_characters"] = [meta["characters"][0] for meta in solo_metas]
    result["one_person_described_by_character"] = described_by_character(flags, solo_metas)
    result["one_face_look_parts"] = look_parts(flags)
    result["vae_look_ceiling"] = look_ceiling(components.vae, solo)
    group = fresh_scenes(
        n_samples, one_person=False, offset=100_000, skip=first, caption_tags=caption_tags
    )
    group_metas = [meta for _, meta in group]
    group_samples = sample(
        components, [", ".join(m["tags"]) for m in group_metas], seeds, steps, cfg
    )
    result["count_error_by_true_count"] = count_error(group_samples, group_metas)
    result["sampler"] = {"scheduler": "DDIM", "steps": steps, "guidance_scale": cfg}
    k = 8
    rows = [
        ("one-person scenes", [image for image, _ in solo[:k]]),
        ("base samples of their tags", solo_samples[:k]),
        ("multi-person scenes", [image for image, _ in group[:k]]),
        ("base samples of their tags", group_samples[:k]),
    ]
    return result, rows


def run(
    model: str | None,
    n_vae: int,
    n_samples: int,
    steps: int,
    cfg: float,
    out_dir: Path = BENCH_DIR,
) -> dict[str, Any]:
    """All three measurements; returns the JSON payload."""
    setup_torch()
    started = time.perf_counter()
    components = load_components("tiny", pretrained=model)
    components.vae.eval()
    result: dict[str, Any] = {"fresh_seed": FRESH_SEED, "targets": TARGETS}
    ceiling = vae_round_trip_agreement(components.vae, n_vae, FRESH_SEED, SIZE)
    result.update(vae_count_kept=ceiling["count_kept"], vae_identity_kept=ceiling["identity_kept"])
    tags = base_caption_tags(tiny_base_path(model))
    readings, rows = sample_readings(components, n_samples, steps, cfg, caption_tags=tags)
    for kept_for_pairing in ("per_sample", "prompted_characters"):
        readings.pop(kept_for_pairing)
    reliance = caption_reliance(components, n_samples, caption_tags=tags)
    reliance.pop("per_scene")
    result.update(readings, caption_tags=tags, caption_reliance=reliance)
    result["met"] = {k: (result[k]["value"] or 0.0) >= v for k, v in TARGETS.items()}
    picture(rows, out_dir / "embedded_world.png")
    result["picture"] = "embedded_world.png"
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: shipped base)")
    parser.add_argument("--n-vae", type=int, default=200)
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=SAMPLER_STEPS)
    parser.add_argument("--cfg", type=float, default=GUIDANCE)
    parser.add_argument("--quick", action="store_true", help="tiny n, for a smoke run")
    parser.add_argument(
        "--stage1",
        type=Path,
        help="only the VAE (stage 1, + 1b if any) of a tiny_base --work folder",
    )
    parser.add_argument(
        "--stage2", type=Path, help="only the samples, with a tiny_base --work folder's UNet"
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="with --stage1 or --stage2: a second work folder (with --stage2 also a finished "
        "base, e.g. ymn/assets/tiny-base), compared paired",
    )
    parser.add_argument(
        "--average",
        action="store_true",
        help="with --stage2: read the work folder's moving average of its weights (a run with "
        "tiny_base --ema-decay); --against still reads trained weights",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="with --stage2: torch threads (default: 1)"
    )
    parser.add_argument(
        "--first-prompt",
        type=int,
        default=0,
        help="with --stage2 (or --stage1's look ceiling): skip this many fresh prompts and seeds "
        "(extend an earlier reading)",
    )
    parser.add_argument(
        "--pair",
        nargs=2,
        metavar=("A", "B"),
        help="pair two saved --stage2 readings made on the same prompts: B − A of each "
        "per-sample reading, and the look within the common and the rarer looks; FILE reads "
        "a file's first arm, FILE:against its --against arm",
    )
    parser.add_argument(
        "--interaction",
        nargs=4,
        metavar=("A", "B", "C", "D"),
        help="four saved --stage2 readings on the same prompts: B − A, D − C and (D − C) − "
        "(B − A), whether a change (A → B) does as much in another setting (C → D)",
    )
    args = parser.parse_args(argv)
    if args.pair is not None:
        a, b = (saved_reading(spec) for spec in args.pair)
        paired = {**pair_readings(a, b), "look_by_casting": look_by_casting(a, b)}
        print(json.dumps({"a": args.pair[0], "b": args.pair[1], **paired}, indent=1))
        return 0
    if args.interaction is not None:
        readings = [saved_reading(spec) for spec in args.interaction]
        named = dict(zip("abcd", args.interaction, strict=True))
        print(json.dumps({**named, **interaction_of_readings(*readings)}, indent=1))
        return 0
    if args.stage1 is not None:
        looks = {"n_look": args.n_samples, "first": args.first_prompt}
        print(json.dumps(run_vae_only(args.stage1, args.n_vae, args.against, **looks), indent=1))
        return 0
    if args.quick:
        args.n_vae, args.n_samples, args.steps = 8, 4, 4
    if args.stage2 is not None:
        readings = run_stage2(
            args.model,
            args.stage2,
            args.n_samples,
            args.steps,
            args.cfg,
            against=args.against,
            average=args.average,
            threads=args.threads,
            first=args.first_prompt,
        )
        print(json.dumps(readings, indent=1))
        return 0
    result = run(args.model, args.n_vae, args.n_samples, args.steps, args.cfg)
    print(write_result("embedded_world", result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
