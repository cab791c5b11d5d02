"""look_zones: where a missing look goes — the colours a base draws around a one-person face.

`embedded_world` reads the described look from two zones around the face: the hair, whose
colour the tags name, and the outfit, which no tag names. For each one-face sample of a fresh
one-person prompt (the prompts and seeds of `embedded_world --stage2 --first-prompt 100
--n-samples 200`, this reader's defaults: the "new prompts"), this names the
owner of the colour covering most of each zone: a roster character, an unnamed person's hair
colour (`unnamed`, the synthetic data's regularization people) or none reaching MIN_FRAC
(null). It also reads the look as if unnamed hair colours vetoed nothing (`character_of` with
their share set to 0): the share of misses that come from a roster look drawn in an unnamed
person's hair colour, which the tags can mean too (Natsume's `brown hair` is also theirs).
Per prompted character it tabulates both zones and both readings.

    python -m experiments.bench.look_zones --stage2 WORK [--first-prompt 100 --n-samples 200]
    python -m experiments.bench.look_zones --stage2 ymn/assets/tiny-base --characters Natsume
    python -m experiments.bench.look_zones --owners   # only who wears each roster tag
    python -m experiments.bench.look_zones --stage2 WORK --characters Tamaki --sheet T.png
        # also a picture: per character, its first scenes each followed by the base's sample
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from experiments.bench.common import setup_torch
from experiments.bench.embedded_world import (
    FRESH_SEED,
    GUIDANCE,
    SAMPLER_STEPS,
    fresh_scenes,
    own_tags,
    picture,
    sample,
    stage2_components,
)
from ymn.data.synthetic import CHARACTERS
from ymn.data.synthetic_draw import Look
from ymn.model.components import TINY_RESOLUTION
from ymn.model.tiny_base import TinyBaseConfig
from ymn.model.tiny_base_data import (
    CAPTION_TAGS,
    base_caption_tags,
    captioned_hair_tag,
    scene_spec,
)
from ymn.probes.detectors import SyntheticFaceDetector
from ymn.probes.identity import (
    LookShares,
    character_of,
    look_shares,
    palette_neighbours,
    zone_characters,
)
from ymn.probes.rates import rate

UNNAMED = "unnamed"
SHEET_PAIRS = 4  # prompts per character in a --sheet picture


def read_zones(image: Any, character: str, detector: SyntheticFaceDetector) -> dict[str, Any]:
    """One sample's reading: its face count and, with exactly one face, each zone's owner and
    the look with and without the unnamed veto."""
    boxes = detector.detect(image)
    reading: dict[str, Any] = {"character": character, "faces": len(boxes)}
    if len(boxes) != 1:
        return reading
    shares = look_shares(image, boxes[0])
    hair_zone, outfit_zone = zone_characters(shares, unnamed_label=UNNAMED)
    return reading | {
        "hair_zone": hair_zone,
        "outfit_zone": outfit_zone,
        "described": character_of(shares) == character,
        "described_without_veto": character_of(without_unnamed(shares)) == character,
    }


def without_unnamed(shares: LookShares) -> LookShares:
    """The shares with the unnamed people's hair colours counted as nothing (no veto)."""
    hair, outfit = shares
    return {**hair, None: 0.0}, outfit


def tabulate(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """Per prompted character (and over all): prompts, one-face samples, the look with and
    without the veto (rates of all prompts, Wilson CI), and each zone's owners among one-face
    samples ("null" where none reached MIN_FRAC)."""
    groups: dict[str, list[dict[str, Any]]] = {"all": readings}
    for reading in readings:
        groups.setdefault(reading["character"], []).append(reading)
    table = {}
    for name, group in sorted(groups.items()):
        one_face = [r for r in group if r["faces"] == 1]
        table[name] = {
            "prompts": len(group),
            "one_face": len(one_face),
            "described": rate(sum(r["described"] for r in one_face), len(group)),
            "described_without_veto": rate(
                sum(r["described_without_veto"] for r in one_face), len(group)
            ),
            "hair_zone": zone_counts(one_face, "hair_zone"),
            "outfit_zone": zone_counts(one_face, "outfit_zone"),
        }
    return table


def zone_counts(readings: list[dict[str, Any]], zone: str) -> dict[str, int]:
    """How many readings name each owner of `zone`, most first."""
    counts = Counter(str(r[zone]) if r[zone] is not None else "null" for r in readings)
    return dict(counts.most_common())


def hair_tag_owners(
    n_images: int = TinyBaseConfig.images,
    seed: int = TinyBaseConfig.seed,
    caption_tags: str = "hair",
) -> dict[str, Any]:
    """Who wears each roster hair tag in the base's scenes (by default `ymn.model.tiny_base`'s:
    4,096 scenes of seed 0, natural casting), as the tag set `caption_tags` names their hair:
    people per roster character or `unnamed`, in all scenes and in one-person scenes. A tag
    that unnamed people wear too means two colours.
    `solo_person_tags`: per roster look, who the one-person scenes whose person carries its
    hair tag, hairstyle and gender show (what a caption's person tags leave open)."""
    roster_tags = {look.hair_tag for look in CHARACTERS.values()}
    owners: dict[str, dict[str, Counter[str]]] = {
        tag: {"people": Counter(), "solo": Counter()} for tag in sorted(roster_tags)
    }
    described = {person_tags(look, caption_tags): Counter() for look in CHARACTERS.values()}
    for index in range(n_images):
        people = scene_spec(seed, index, TINY_RESOLUTION).people
        for person in people:
            owner = person.look.name if person.look.name in CHARACTERS else UNNAMED
            hair_tag = captioned_hair_tag(person.look, caption_tags)
            if hair_tag not in roster_tags:
                continue
            owners[hair_tag]["people"][owner] += 1
            owners[hair_tag]["solo"][owner] += len(people) == 1
            tags = person_tags(person.look, caption_tags)
            if len(people) == 1 and tags in described:
                described[tags][owner] += 1
    return {
        "scenes": n_images,
        "seed": seed,
        "caption_tags": caption_tags,
        "tags": {
            tag: {kind: dict(counts.most_common()) for kind, counts in by_kind.items()}
            for tag, by_kind in owners.items()
        },
        "solo_person_tags": {
            name: {"tags": person_tags(look), "owners": dict(described[person_tags(look)])}
            for name, look in CHARACTERS.items()
        },
    }


def person_tags(look: Look, caption_tags: str = "hair") -> str:
    """The tags a one-person caption in the tag set `caption_tags` gives its person: hair
    colour, hairstyle, gender."""
    return f"{captioned_hair_tag(look, caption_tags)}, {look.style}, 1{look.gender}"


def run(
    model: str | None,
    work: Path,
    n_samples: int,
    first: int,
    characters: list[str],
    steps: int = SAMPLER_STEPS,
    cfg: float = GUIDANCE,
    sheet: Path | None = None,
) -> dict[str, Any]:
    """Samples the fresh one-person prompts `first` to `first + n_samples` whose character is
    in `characters` (seed = the prompt's index, as `embedded_world` does) and tabulates them;
    with `sheet`, also a PNG there of each character's first prompts (see `pairs_by_character`)."""
    components, step = stage2_components(model, work)
    tags = base_caption_tags(work)
    solo = fresh_scenes(n_samples, one_person=True, skip=first, caption_tags=tags)
    chosen = [i for i, (_, meta) in enumerate(solo) if meta["characters"][0] in characters]
    metas = [solo[i][1] for i in chosen]
    prompts, seeds = [own_tags(m) for m in metas], [first + i for i in chosen]
    images = sample(components, prompts, seeds, steps, cfg)
    detector = SyntheticFaceDetector()
    readings = [
        read_zones(image, meta["characters"][0], detector)
        for image, meta in zip(images, metas, strict=True)
    ]
    if sheet is not None:
        picture(pairs_by_character([solo[i] for i in chosen], images, characters), sheet)
    return {
        "fresh_seed": FRESH_SEED,
        "stage2_step": step,
        "caption_tags": tags,
        "prompts": {"first": first, "n": n_samples, "characters": characters},
        "sampler": {"scheduler": "DDIM", "steps": steps, "guidance_scale": cfg},
        "by_character": tabulate(readings),
        "hair_tag_owners": hair_tag_owners(caption_tags=tags),
        "palette_neighbours": palette_neighbours(),
        "per_sample": [{"prompt": first + i, **r} for i, r in zip(chosen, readings, strict=True)],
    }


def pairs_by_character(
    scenes: list[tuple[Image.Image, dict]],
    samples: list[Image.Image],
    characters: list[str],
    per_row: int = SHEET_PAIRS,
) -> list[tuple[str, list[Image.Image]]]:
    """One row per character: its first `per_row` prompts' scenes, each followed by the base's
    sample of its tags."""
    rows = []
    for name in characters:
        pairs = [
            (scene, drawn)
            for (scene, meta), drawn in zip(scenes, samples, strict=True)
            if meta["characters"][0] == name
        ][:per_row]
        rows.append((name, [image for pair in pairs for image in pair]))
    return [row for row in rows if row[1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage2", type=Path, help="a tiny_base --work folder or a finished base")
    which.add_argument(
        "--owners", action="store_true", help="only who wears each roster tag in the base's scenes"
    )
    parser.add_argument("--model", default=None, help="the VAE's base for a --work folder")
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--first-prompt", type=int, default=100)
    parser.add_argument(
        "--characters", nargs="+", default=list(CHARACTERS), choices=list(CHARACTERS)
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--caption-tags",
        default="hair",
        choices=CAPTION_TAGS,
        help="with --owners: the tag set whose hair tags to count (--stage2 reads its base's)",
    )
    parser.add_argument(
        "--sheet", type=Path, help="also a PNG: per character, its first scenes and samples"
    )
    args = parser.parse_args(argv)
    if args.owners:
        print(json.dumps(hair_tag_owners(caption_tags=args.caption_tags), indent=1))
        return 0
    setup_torch(args.threads)
    result = run(
        args.model,
        args.stage2,
        args.n_samples,
        args.first_prompt,
        args.characters,
        sheet=args.sheet,
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
