"""Synthetic multi-character dataset in the ASP layout (the embedded default data).

Simple, bold, flat-coloured mountain scenes with 1-5 named characters (or unnamed people),
hand close-ups and a small outline-free "fanart" branch, each image with an exact Jan-2023
ASP metadata sidecar. Ground truth is read back from the drawn pixels, so ``facepos`` is the
exact bounding box of each face's skin. Generation is deterministic per (seed, image index).

    ymn-synth OUT --n 2000 --seed 0 --size 128 --workers 2
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ymn.data.synthetic_draw import (
    EYES,
    HAIR_STYLES,
    OUTFITS,
    PANTS,
    SKIN,
    Background,
    Hand,
    Look,
    Mountain,
    Person,
    SceneSpec,
    draw_scene,
    face_box_px,
)

__all__ = [
    "CHARACTERS",
    "KIND_MIX",
    "SceneSpec",
    "generate_dataset",
    "main",
    "render_layout",
    "render_scene",
    "sample_scene_spec",
    "scene_folder",
]

Box = tuple[float, float, float, float] | list[float]

CHARACTERS: dict[str, Look] = {
    look.name: look
    for look in (
        Look("SaitoMio", (200, 40, 40), "red hair", "twintails", (60, 150, 90), (120, 30, 40)),
        Look("KonoRina", (60, 160, 70), "green hair", "bob cut", (240, 140, 40), EYES[1]),
        Look("OnoHaru", (50, 100, 210), "blue hair", "long hair", (245, 210, 60), EYES[0]),
        Look("TeraNao", (30, 30, 40), "black hair", "ponytail", (210, 50, 60), EYES[2]),
        Look("IdaSaki", (225, 230, 240), "white hair", "hair bun", (130, 70, 170), EYES[0]),
        Look("UedaFumi", (240, 120, 180), "pink hair", "long hair", (60, 90, 180), EYES[3]),
        Look("Tamaki", (240, 200, 60), "blonde hair", "short hair", (40, 50, 110), EYES[1]),
        Look("Natsume", (130, 80, 40), "brown hair", "twintails", (240, 240, 240), EYES[2]),
    )
}
# main characters appear more often, like the anime's leads
CHARACTER_WEIGHTS = np.array([4, 4, 3, 3, 2, 2, 1, 1], dtype=float)
UNKNOWN_HAIR = (
    ((130, 130, 130), "grey hair"),
    ((120, 60, 150), "purple hair"),
    ((40, 150, 150), "aqua hair"),
    ((230, 120, 30), "orange hair"),
    ((80, 50, 30), "brown hair"),
)
KIND_MIX = {"screenshot": 0.60, "regularization": 0.30, "hands": 0.05, "fanart": 0.05}
PEOPLE_WEIGHTS = np.array([0.40, 0.27, 0.17, 0.10, 0.06])  # P(n = 1..5): fewer as n rises
MAX_FH = {1: 0.94, 2: 0.44, 3: 0.3, 4: 0.24, 5: 0.22}  # largest face that leaves room for all
MIN_FACE_PX = 12
GRID = 5


# ---------------------------------------------------------------- spec sampling


def _unknown_look(rng: np.random.Generator) -> Look:
    hair, tag = UNKNOWN_HAIR[rng.integers(len(UNKNOWN_HAIR))]
    gender = "boy" if rng.random() < 0.4 else "girl"
    styles = ("short hair", "bob cut") if gender == "boy" else HAIR_STYLES
    return Look(
        "unknown",
        hair,
        tag,
        styles[rng.integers(len(styles))],
        OUTFITS[rng.integers(len(OUTFITS))],
        EYES[rng.integers(len(EYES))],
        gender,
    )


def _sample_background(rng: np.random.Generator, kind: str) -> Background:
    if kind == "fanart":
        blobs = tuple(
            (rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.07)) for _ in range(4)
        )
        return Background("pastel", horizon=1.0, blobs=blobs)
    setting = rng.choice(["day", "day", "day", "sunset", "night", "indoor"])
    horizon = float(rng.uniform(0.55, 0.8))
    if setting == "indoor":
        return Background("indoor", horizon=horizon)
    mountains = []
    for layer, n_peaks in ((0, rng.integers(1, 4)), (1, rng.integers(1, 3))):
        for _ in range(n_peaks):
            peak_x = float(rng.uniform(-0.1, 1.1))
            half = float(rng.uniform(0.25, 0.6))
            peak_y = float(rng.uniform(0.1, 0.35) + 0.15 * layer)
            mountains.append(Mountain(peak_x - half, peak_x, peak_y, peak_x + half, horizon, layer))
    blobs: tuple[tuple[float, float, float], ...] = ()
    if setting in ("day", "sunset"):
        blobs = tuple(
            (rng.uniform(0, 1), rng.uniform(0.05, 0.25), rng.uniform(0.05, 0.1))
            for _ in range(rng.integers(0, 3))
        )
    return Background(str(setting), horizon=horizon, mountains=tuple(mountains), blobs=blobs)


def _sample_diameters(rng: np.random.Generator, n: int, size: int, outline: bool) -> list[float]:
    """Face diameters: the largest face's skin height falls in a random reachable 25 % bin."""
    min_d = max(0.1, (MIN_FACE_PX + 1) / size)
    max_d = MAX_FH[n]
    skin = 14 / 16 if outline else 1.0  # the outline (d/16 each side) is not part of facepos
    bins = [lb for lb in (0.0, 0.25, 0.5, 0.75) if lb < max_d * skin]
    lb = bins[rng.integers(len(bins))]
    height = rng.uniform(max(lb, min_d * skin), min(lb + 0.25, max_d * skin))
    largest = float(height / skin)
    others = [float(rng.uniform(min_d, max(min_d, min(largest, 0.25)))) for _ in range(n - 1)]
    return [largest, *others]


def _overlaps(a: tuple[float, float, float], b: tuple[float, float, float], gap: float) -> bool:
    reach = (a[2] + b[2]) / 2 + gap
    return abs(a[0] - b[0]) < reach and abs(a[1] - b[1]) < reach


def _place_faces(
    rng: np.random.Generator, diameters: list[float], size: int
) -> list[tuple[float, float, float]]:
    """Non-overlapping face discs; each aims at a uniformly drawn 5x5 cell (coverage)."""
    margin, gap = 2 / size, max(0.03, 3 / size)
    for _ in range(50):
        placed: list[tuple[float, float, float]] = []
        for d in diameters:
            for _ in range(100):
                lo, hi = d / 2 + margin, 1 - d / 2 - margin
                centre = []
                for cell in rng.integers(GRID, size=2):
                    a, b = max(lo, cell / GRID), min(hi, (cell + 1) / GRID)
                    centre.append(float(rng.uniform(a, b) if a < b else rng.uniform(lo, hi)))
                face = (centre[0], centre[1], d)
                if not any(_overlaps(face, other, gap) for other in placed):
                    placed.append(face)
                    break
            else:
                break
        if len(placed) == len(diameters):
            return placed
        diameters = [max(d * 0.9, (MIN_FACE_PX + 1) / size) for d in diameters]
    raise RuntimeError(f"could not place {len(diameters)} faces at {size}px; use a larger --size")


def sample_scene_spec(
    rng: np.random.Generator,
    kind: str,
    size: int,
    n_people: int | None = None,
    character_weights: np.ndarray = CHARACTER_WEIGHTS,
) -> SceneSpec:
    """Draw a random scene of a dataset branch: screenshot, fanart, regularization or hands.

    `character_weights` (one per roster character) sets how often each is cast; the kind and
    people count are drawn before it, the rest of the scene after (so it changes too)."""
    if kind not in KIND_MIX:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {sorted(KIND_MIX)}")
    background = _sample_background(rng, kind)
    if kind == "hands":
        hands = tuple(
            Hand(
                float(rng.uniform(0.3, 0.7)),
                float(rng.uniform(0.45, 0.65)),
                float(rng.uniform(0.25, 0.45)),
                float(rng.uniform(-40, 40)),
                OUTFITS[rng.integers(len(OUTFITS))],
            )
            for _ in range(1 if rng.random() < 0.7 else 2)
        )
        return SceneSpec(kind, background, hands=hands)
    n = n_people or int(rng.choice(np.arange(1, 6), p=PEOPLE_WEIGHTS))
    if kind == "regularization":
        looks = [_unknown_look(rng) for _ in range(n)]
    else:
        names = list(CHARACTERS)
        p = character_weights / character_weights.sum()
        looks = [CHARACTERS[names[i]] for i in rng.choice(len(names), size=n, replace=False, p=p)]
    faces = _place_faces(rng, _sample_diameters(rng, n, size, kind != "fanart"), size)
    people = tuple(
        Person(look, cx, cy, d, PANTS[rng.integers(len(PANTS))], bool(rng.random() < 0.4))
        for look, (cx, cy, d) in zip(looks, faces, strict=True)
    )
    return SceneSpec(kind, background, people=people, outline=kind != "fanart")


# ---------------------------------------------------------------- rendering + metadata


def _face_boxes(image: Image.Image, people: tuple[Person, ...]) -> list[list[float]]:
    """Exact [l, t, r, b] fractions of each face's skin pixels (pixel-edge convention)."""
    arr = np.asarray(image)
    skin = np.all(arr == np.array(SKIN, dtype=np.uint8), axis=-1)
    size = image.width
    boxes = []
    for person in people:
        x0, y0, x1, y1 = face_box_px(person, size)
        ys, xs = np.nonzero(skin[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1])
        if len(xs) == 0:
            raise RuntimeError(
                f"face of {person.look.name} vanished at {size}px; use a larger size"
            )
        left, top = max(x0, 0) + xs.min(), max(y0, 0) + ys.min()
        right, bottom = max(x0, 0) + xs.max() + 1, max(y0, 0) + ys.max() + 1
        boxes.append([float(v / size) for v in (left, top, right, bottom)])
    return boxes


def _count_tags(looks: list[Look]) -> list[str]:
    counts = Counter(look.gender for look in looks)
    tags = []
    for gender in ("girl", "boy"):
        k = counts[gender]
        if k:
            tags.append(f"{k}{gender}" if k == 1 else f"{k}{gender}s")
        if k >= 2:
            tags.append(f"multiple {gender}s")
    if len(looks) == 1:
        tags.append("solo")
    return tags


def _scene_tags(spec: SceneSpec, looks: list[Look]) -> list[str]:
    tags = _count_tags(looks)
    for look in looks:
        for tag in (look.hair_tag, look.style):
            if tag not in tags:
                tags.append(tag)
    if spec.kind == "hands":
        tags += ["hands", "close-up"]
    setting = spec.background.setting
    if setting == "indoor":
        tags += ["indoors", "window"]
    elif setting != "pastel":
        tags += ["outdoors", "mountain", "sky"]
        tags.append({"day": "day", "sunset": "sunset", "night": "night"}[setting])
        if spec.background.blobs:
            tags.append("cloud")
    else:
        tags.append("simple background")
    return tags


def render_scene(spec: SceneSpec, size: int) -> tuple[Image.Image, dict]:
    """Draw a spec at size x size px; return the image and its ASP Jan-2023 metadata."""
    image = draw_scene(spec, size)
    boxes = _face_boxes(image, spec.people)
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0] + boxes[i][2], boxes[i][1]))
    looks = [spec.people[i].look for i in order]
    facepos = [boxes[i] for i in order]
    meta = {
        "n_faces": len(facepos),
        "facepos": facepos,
        "fh_ratio": max((b[3] - b[1] for b in facepos), default=0.0),
        "cropped": False,
        "characters": [look.name for look in looks],
        "general": {"screenshot": "aniscreen", "fanart": "fanart"}.get(spec.kind),
        "tags": _scene_tags(spec, looks),
        "n_people": len(spec.people),
    }
    if spec.kind in ("screenshot", "fanart"):
        meta["copyright"] = "ymnsynth"
    return image, meta


def render_layout(characters: list[str], facepos: list[Box], size: int) -> Image.Image:
    """Draw the named characters ("unknown" allowed) with their faces at the given boxes."""
    if len(characters) != len(facepos):
        raise ValueError(f"{len(characters)} characters but {len(facepos)} face boxes")
    people = []
    for name, (left, top, right, bottom) in zip(characters, facepos, strict=True):
        look = CHARACTERS.get(name) or _unknown_look(np.random.default_rng(len(people)))
        d = min(right - left, bottom - top)
        people.append(Person(look, (left + right) / 2, (top + bottom) / 2, d))
    background = Background("day", horizon=0.7, mountains=(Mountain(0.0, 0.5, 0.2, 1.0, 0.7, 0),))
    return draw_scene(SceneSpec("screenshot", background, people=tuple(people)), size)


def scene_folder(kind: str, meta: dict) -> str:
    """ASP folder of an image, e.g. screenshots/2_characters/A+B/face_height_ratio_0-25."""
    if kind == "hands":
        return "hands"
    n = meta["n_people"]
    lb = min(75, int(meta["fh_ratio"] * 100) // 25 * 25)
    fh = f"face_height_ratio_{lb}-{lb + 25}"
    if kind == "regularization":
        return f"regularization/{n}_people/{fh}"
    top = "screenshots" if kind == "screenshot" else "fanart"
    names = "+".join(sorted(meta["characters"]))
    return f"{top}/{n}_character{'s' if n > 1 else ''}/{names}/{fh}"


# ---------------------------------------------------------------- dataset + CLI


def _generate_one(job: tuple[Path, int, int, int]) -> tuple[str, str, int]:
    out, index, seed, size = job
    rng = np.random.default_rng([seed, index])
    kinds = list(KIND_MIX)
    kind = kinds[int(rng.choice(len(kinds), p=list(KIND_MIX.values())))]
    image, meta = render_scene(sample_scene_spec(rng, kind, size), size)
    folder = out / scene_folder(kind, meta)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"ymnsynth_{index:06d}"
    image.save(folder / f"{name}.png")
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return kind, scene_folder(kind, meta), meta["n_people"]


def generate_dataset(out: Path, n: int, seed: int = 0, size: int = 128, workers: int = 1) -> dict:
    """Write n images with sidecars under out (ASP layout) plus out/synth_info.json."""
    if size < 64:
        raise ValueError(f"--size {size} is too small for {MIN_FACE_PX}px faces; use >= 64")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, i, seed, size) for i in range(n)]
    bar = dict(total=n, desc="ymn-synth", unit="img")
    if workers > 1:
        with Pool(workers) as pool:
            results = list(tqdm(pool.imap(_generate_one, jobs, chunksize=8), **bar))
    else:
        results = [_generate_one(job) for job in tqdm(jobs, **bar)]
    info = {
        "version": 1,
        "seed": seed,
        "n": n,
        "size": size,
        "characters": [
            {"name": c.name, "hair": c.hair_tag, "style": c.style, "outfit": list(c.outfit)}
            for c in CHARACTERS.values()
        ],
        "counts": {
            "kind": dict(sorted(Counter(r[0] for r in results).items())),
            "n_people": {str(k): v for k, v in sorted(Counter(r[2] for r in results).items())},
            "folders": dict(sorted(Counter(r[1] for r in results).items())),
        },
    }
    (out / "synth_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    """CLI: ymn-synth OUT --n N [--seed S] [--size PX] [--workers W]."""
    parser = argparse.ArgumentParser(prog="ymn-synth", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output dataset root (ASP layout)")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    args = parser.parse_args(argv)
    try:
        info = generate_dataset(args.out, args.n, args.seed, args.size, args.workers)
    except (OSError, ValueError) as error:  # an unwritable OUT or bad sizes: no traceback
        raise SystemExit(f"ymn-synth: {error}") from error
    print(f"wrote {info['n']} images to {args.out}: {info['counts']['kind']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
