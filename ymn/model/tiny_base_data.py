"""The tiny base's training data: scenes drawn in memory, deterministic per (seed, index),
and the generic captions a general base sees."""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from ymn.data.synthetic import (
    CHARACTER_WEIGHTS,
    KIND_MIX,
    SceneSpec,
    render_scene,
    sample_scene_spec,
)
from ymn.data.synthetic_draw import OUTFITS, Look

# how often each roster character is cast in base scenes: "natural" as `ymn-synth` (the leads
# more often), "balanced" every look equally often
CHARACTER_MIXES = {"natural": CHARACTER_WEIGHTS, "balanced": np.ones_like(CHARACTER_WEIGHTS)}

# which tags a base's captions carry: "hair" as `ymn-synth` writes them (hair colour and style:
# a look's outfit is never named, and `brown hair` is both Natsume's and an unnamed people's
# darker brown), "distinct-hair" (the unnamed brown told apart, `dark brown hair`),
# "unshared-hair" (told apart by a word no roster tag has, `chestnut hair`), or "look"
# (as "distinct-hair", and each person's outfit colour)
CAPTION_TAGS = ("hair", "distinct-hair", "unshared-hair", "look")
OUTFIT_TAGS = dict(
    zip(
        OUTFITS,
        (
            "green shirt",
            "orange shirt",
            "yellow shirt",
            "red shirt",
            "purple shirt",
            "blue shirt",
            "navy shirt",
            "white shirt",
            "teal shirt",
            "grey shirt",
        ),
        strict=True,
    )
)
UNNAMED_HAIR_RETAGS = {  # per tag set: an unnamed hair colour that shares a roster tag, renamed
    "hair": {},
    "distinct-hair": {"brown hair": "dark brown hair"},
    "unshared-hair": {"brown hair": "chestnut hair"},
    "look": {"brown hair": "dark brown hair"},
}
BASE_CAPTIONS = "base_captions.json"  # the tag set stages 1c and 2 of a work folder caption with


def synthetic_scene(
    seed: int, index: int, size: int, character_mix: str = "natural", caption_tags: str = "hair"
) -> tuple[Image.Image, dict]:
    """One multi-character scene of `ymn.data.synthetic`, drawn as `ymn-synth` draws it (with
    "balanced", a scene of the same kind and people count, every roster look equally likely),
    its tags as `caption_tags` names (see CAPTION_TAGS)."""
    spec = scene_spec(seed, index, size, character_mix)
    image, meta = render_scene(spec, size)
    meta["tags"] = look_tags(spec, meta["tags"], caption_tags)  # "hair": ymn-synth's, unchanged
    return image, meta


def check_caption_tags(caption_tags: str) -> str:
    """`caption_tags` if it names a tag set of CAPTION_TAGS, else a clear error."""
    if caption_tags not in CAPTION_TAGS:
        raise ValueError(f"caption tags {caption_tags!r}: expected one of {list(CAPTION_TAGS)}")
    return caption_tags


def record_caption_tags(work: Path, caption_tags: str, text_stages: tuple[str, ...] = ()) -> None:
    """Note in `work` the tag set its stages 1c and 2 caption with; refuse to resume a work
    folder whose text stages (checkpoint names `text_stages`) were trained on another."""
    recorded = base_caption_tags(work)  # "hair" for folders from before the record existed
    started = (BASE_CAPTIONS, *(f"{stage}.json" for stage in text_stages))
    if any((Path(work) / name).is_file() for name in started) and recorded != caption_tags:
        raise ValueError(
            f"{work}: its text stages were trained with --caption-tags {recorded}, not "
            f"{caption_tags}; use another --work folder"
        )
    Path(work).mkdir(parents=True, exist_ok=True)
    (Path(work) / BASE_CAPTIONS).write_text(json.dumps({"caption_tags": caption_tags}) + "\n")


def base_caption_tags(folder: Path) -> str:
    """The tag set a base was trained to read: a work folder's record, a saved base's
    train_info.json, or "hair" (bases from before the choice existed)."""
    record, info = Path(folder) / BASE_CAPTIONS, Path(folder) / "train_info.json"
    if record.is_file():
        return check_caption_tags(json.loads(record.read_text())["caption_tags"])
    if info.is_file():
        return check_caption_tags(
            json.loads(info.read_text()).get("config", {}).get("caption-tags", "hair")
        )
    return "hair"


def look_tags(spec: SceneSpec, tags: list[str], caption_tags: str) -> list[str]:
    """A scene's `ymn-synth` tags made to describe each person's look as the tag set
    `caption_tags` does: an unnamed person's hair colour that shares a roster look's tag renamed
    (UNNAMED_HAIR_RETAGS), and under "look" every outfit colour named."""
    retags = UNNAMED_HAIR_RETAGS[check_caption_tags(caption_tags)]
    roster_hair = {p.look.hair_tag for p in spec.people if p.look.name != "unknown"}
    described = [tag for tag in tags if tag not in retags or tag in roster_hair]
    for person in spec.people:
        hair_tag = captioned_hair_tag(person.look, caption_tags)
        if hair_tag not in described:
            described.append(hair_tag)
    for person in spec.people if caption_tags == "look" else ():
        outfit = OUTFIT_TAGS[person.look.outfit]
        if outfit not in described:
            described.append(outfit)
    return described


def captioned_hair_tag(look: Look, caption_tags: str) -> str:
    """A person's hair tag as the tag set `caption_tags` writes it: an unnamed person's colour
    that shares a roster look's tag renamed (UNNAMED_HAIR_RETAGS)."""
    retags = UNNAMED_HAIR_RETAGS[check_caption_tags(caption_tags)]
    return retags.get(look.hair_tag, look.hair_tag) if look.name == "unknown" else look.hair_tag


def scene_spec(seed: int, index: int, size: int, character_mix: str = "natural") -> SceneSpec:
    """What `synthetic_scene` draws, undrawn (who is in it, with which look)."""
    weights = character_weights(character_mix)
    rng = np.random.default_rng([seed, index])
    kinds = list(KIND_MIX)
    kind = kinds[int(rng.choice(len(kinds), p=list(KIND_MIX.values())))]
    return sample_scene_spec(rng, kind, size, character_weights=weights)


def character_weights(character_mix: str) -> np.ndarray:
    """The roster casting weights of a character mix name."""
    if character_mix not in CHARACTER_MIXES:
        expected = list(CHARACTER_MIXES)
        raise ValueError(f"character mix {character_mix!r}: expected one of {expected}")
    return CHARACTER_MIXES[character_mix]


def procedural_scene(seed: int, index: int, size: int) -> tuple[Image.Image, dict]:
    """Coloured discs ("faces") over rectangles ("bodies") on a vertical gradient."""
    rng = np.random.default_rng([seed, index, 1])
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    n = int(rng.integers(1, 5))
    boxes = []
    for _ in range(n):
        d = rng.uniform(0.12, 0.3) * size
        cx, cy = rng.uniform(d, size - d), rng.uniform(d, size * 0.7)
        body = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle([cx - d * 0.6, cy + d * 0.4, cx + d * 0.6, size], fill=body)
        draw.ellipse([cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2], fill=(250, 220, 190))
        boxes.append([v / size for v in (cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2)])
    meta = {"n_people": n, "characters": [], "facepos": boxes, "tags": ["gradient", "disc"]}
    return image, meta


def make_scenes(
    data: str,
    n: int,
    seed: int,
    size: int,
    character_mix: str = "natural",
    caption_tags: str = "hair",
) -> tuple[torch.Tensor, list[dict]]:
    """n scenes as a uint8 tensor (n, 3, size, size) and their metadata (`character_mix`,
    `caption_tags`: see `synthetic_scene`; procedural scenes have no characters)."""
    character_weights(character_mix)
    check_caption_tags(caption_tags)
    draw = {
        "synthetic": partial(
            synthetic_scene, character_mix=character_mix, caption_tags=caption_tags
        ),
        "procedural": procedural_scene,
    }.get(data)
    if draw is None:
        raise ValueError(f"--data {data!r}: expected 'synthetic' or 'procedural'")
    images, metas = [], []
    for index in tqdm(range(n), desc=f"draw {data} scenes ({character_mix})", unit="img"):
        image, meta = draw(seed, index, size)
        images.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()))
        metas.append(meta)
    return torch.stack(images).permute(0, 3, 1, 2).contiguous(), metas


def base_caption(meta: dict, rng: random.Random, dropout: float) -> str:
    """A general base's caption: the scene's generic tags, shuffled ("" with p = dropout).

    `meta["tags"]` holds appearance, setting and booru count tags (`1girl`, `solo`); names,
    the `Npeople` token and face-grid tokens live elsewhere in the metadata and are left out.
    """
    if rng.random() < dropout:
        return ""
    tags = list(meta["tags"])
    rng.shuffle(tags)
    return ", ".join(tags)
