"""The probe instruments run on images whose answer is known: ground-truth renders of the probe
layouts (positive control), the same renders scored against shuffled targets and content-free
images (negative controls), and degraded renders (detector robustness).

Scoring goes through the probe code itself (`count_metrics`, `facegrid_metrics`,
`identity_metrics`, `SyntheticFaceDetector`, `identify_character`), image by image, so every
rate comes with the per-image tallies that its interval needs.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageFilter

from ymn.data.synthetic import CHARACTERS, render_layout, sample_scene_spec
from ymn.data.synthetic_draw import draw_scene
from ymn.paths import CONFIG_DIR
from ymn.probes.count import count_metrics
from ymn.probes.facegrid import facegrid_metrics
from ymn.probes.identity import identify_character, identity_metrics
from ymn.probes.prompts import LAYOUTS, MANY, build_probe_prompts, layout_centres
from ymn.probes.rates import clustered_rate, rate

PROBE_FACE = 0.12  # build_probe_prompts' default face_size
GRID = 5


# ----------------------------------------------------------------------------- probe layouts


def probe_defaults() -> dict[str, Any]:
    """counts / layouts / characters of the probe runner's default config (conf/probes)."""
    conf = OmegaConf.load(CONFIG_DIR / "probes" / "default.yaml")
    return {
        "counts": list(conf.counts),
        "layouts": list(conf.layouts),
        "characters": conf.characters,
    }


def layout_boxes(layout: str, n: int, face: float = PROBE_FACE) -> list[list[float]]:
    """The face boxes a probe record asks for (the centres `build_probe_prompts` uses)."""
    half = face / 2
    return [
        [max(0.0, x - half), max(0.0, y - half), min(1.0, x + half), min(1.0, y + half)]
        for x, y in layout_centres(layout, n)
    ]


def probe_layout_records(casts: int = 8) -> list[dict[str, Any]]:
    """Probe records of the default counts × every layout × `casts` casts, each with its boxes.

    Cast 0 is the runner's default (`characters: auto`); cast s > 0 gives the faces the roster
    rotated by s, so every roster character appears at every face position. The runner's own
    default set (cast 0, layouts row and scatter) is a subset; seeds only matter for sampling.
    """
    defaults = probe_defaults()
    roster = list(CHARACTERS)
    records = []
    for s in range(casts):
        cast = defaults["characters"] if s == 0 else roster[s:] + roster[:s]
        for record in build_probe_prompts(
            counts=defaults["counts"], layouts=LAYOUTS, seeds=(0,), characters=cast
        ):
            record["cast"] = s
            record["boxes"] = layout_boxes(record["layout"], record["count"])
            record["default_probe"] = s == 0 and record["layout"] in defaults["layouts"]
            records.append(record)
    return records


def render_records(records: Sequence[dict[str, Any]], size: int = 128) -> list[Image.Image]:
    """Ground-truth renders: each record's characters with their faces at its boxes."""
    return [render_layout(r["characters"], r["boxes"], size) for r in records]


# ----------------------------------------------------------------------------- scoring


def read_images(images: Sequence[Image.Image], detector: Any) -> list[dict[str, Any]]:
    """Detector boxes and `identify_character` answers of each image."""
    readings = []
    for image in images:
        boxes = [list(b) for b in detector.detect(image)]
        readings.append(
            {"boxes": boxes, "identities": [identify_character(image, b) for b in boxes]}
        )
    return readings


def score(
    records: Sequence[dict[str, Any]], readings: Sequence[dict[str, Any]], seed: int = 0
) -> dict[str, Any]:
    """Count exact accuracy (per image), cell accuracy (per target face) and identity accuracy
    (per matched named face: the probe's char_acc), each with n and a 95 % interval; plus the
    share of images with any face and the mean number of faces found."""
    if len(records) != len(readings):
        raise ValueError(f"{len(records)} records but {len(readings)} readings")
    requested = [int(r["count"]) for r in records]
    detected = [min(len(x["boxes"]), MANY) for x in readings]  # the runner's cap: 6 = 6+
    count = count_metrics(requested, detected, n_permutations=0)
    cell_hits, cell_totals, id_hits, id_totals = [], [], [], []
    for record, reading in zip(records, readings, strict=True):
        cells = [tuple(c) for c in record["cells"]]
        grid = facegrid_metrics([cells], [reading["boxes"]], GRID)
        cell_totals.append(grid["n_targets"])
        cell_hits.append(round(grid["cell_acc"] * grid["n_targets"]) if cells else 0)
        ident = identity_metrics(
            [record["characters"]],
            [reading["boxes"]],
            target_cells_per_image=[cells],
            identified_per_image=[reading["identities"]],
            grid=GRID,
        )
        id_totals.append(ident["n_matched"])
        id_hits.append(round(ident["char_acc"] * ident["n_matched"]) if ident["n_matched"] else 0)
    n_found = [len(x["boxes"]) for x in readings]
    right = [r == d for r, d in zip(requested, detected, strict=True)]
    return {
        "n_images": len(records),
        "count_acc": rate(sum(right), len(records)),
        "cell_acc": clustered_rate(cell_hits, cell_totals, seed),
        "identity_acc": clustered_rate(id_hits, id_totals, seed),
        "any_face": rate(sum(n > 0 for n in n_found), len(records)),
        "mean_faces": float(np.mean(n_found)),
        "count_mae": count["mae"],
        "count_by_requested": {
            str(c): rate(
                sum(ok for r, ok in zip(requested, right, strict=True) if r == c),
                sum(r == c for r in requested),
            )
            for c in sorted(set(requested))
        },
    }


def independence_chance(requested: Sequence[int], detected: Sequence[int]) -> float:
    """Exact-count accuracy expected when detections are independent of the requests:
    Σ_c P(requested = c) · P(detected = c) from the two marginals."""
    p = Counter(int(r) for r in requested)
    q = Counter(min(int(d), MANY) for d in detected)
    return float(sum(p[c] * q[c] for c in p) / (len(requested) * len(detected)))


def analytic_chance(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Chance levels of the three probe metrics for a random guesser: a count drawn from the
    requested distribution (Σ p_c²), a uniform cell (1/25), a uniform roster character."""
    counts = Counter(int(r["count"]) for r in records)
    total = sum(counts.values())
    return {
        "count_acc": float(sum((v / total) ** 2 for v in counts.values())),
        "count_acc_uniform": 1.0 / len(counts),
        "cell_acc": 1.0 / GRID**2,
        "identity_acc": 1.0 / len(CHARACTERS),
    }


def shuffled(records: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Each record's targets (count, cells, characters) handed to another record's image:
    a seeded permutation of the whole records."""
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[int(i)] for i in order]


# ----------------------------------------------------------------------------- negative images


def blank_images(n: int, seed: int, size: int = 128) -> list[Image.Image]:
    """Images of one random flat colour each."""
    rng = np.random.default_rng(seed)
    return [
        Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        for _ in range(n)
    ]


def noise_images(n: int, seed: int, size: int = 128) -> list[Image.Image]:
    """Uniform RGB noise, independent per pixel and channel."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def empty_scenes(n: int, seed: int, size: int = 128) -> list[Image.Image]:
    """Synthetic screenshot backgrounds (mountains, sky, rooms) with the people removed."""
    images = []
    for i in range(n):
        spec = sample_scene_spec(np.random.default_rng([seed, i]), "screenshot", size)
        images.append(draw_scene(dataclasses.replace(spec, people=()), size))
    return images


def hand_scenes(n: int, seed: int, size: int = 128) -> list[Image.Image]:
    """The synthetic data's hand close-ups (skin-like hands, no face)."""
    return [
        draw_scene(sample_scene_spec(np.random.default_rng([seed, i]), "hands", size), size)
        for i in range(n)
    ]


NEGATIVE_IMAGES = {
    "blank": blank_images,
    "noise": noise_images,
    "empty_scene": empty_scenes,
    "hands": hand_scenes,
}


# ----------------------------------------------------------------------------- degradations


def add_noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """Gaussian pixel noise of std sigma (0-255 units), clipped to the valid range."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    noisy = arr + rng.normal(0.0, sigma, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def blur(image: Image.Image, radius: float) -> Image.Image:
    """PIL's Gaussian blur of the given radius (px)."""
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def degraded(
    images: Sequence[Image.Image], kind: str, level: float, seed: int = 0
) -> list[Image.Image]:
    """Every image under one degradation: kind "noise" (sigma) or "blur" (radius)."""
    if level == 0:
        return list(images)
    if kind == "noise":
        rng = np.random.default_rng([seed, int(level * 100)])
        return [add_noise(image, level, rng) for image in images]
    if kind == "blur":
        return [blur(image, level) for image in images]
    raise ValueError(f"unknown degradation {kind!r}: use noise or blur")


def tolerance(
    levels: Sequence[dict[str, Any]],
    floor: float = 0.95,
    keys: Sequence[str] = ("count_acc", "cell_acc", "identity_acc"),
) -> float | None:
    """The largest level up to which every metric in keys stays >= floor (point estimates,
    levels in increasing order); None if the cleanest level fails."""
    tolerated = None
    for row in levels:
        values = [row[k]["value"] for k in keys]
        if any(v is None or v < floor for v in values):
            break
        tolerated = row["level"]
    return tolerated


# ----------------------------------------------------------------------------- colour precision


def solo_scenes_by_character(
    per_character: int, seed: int, size: int = 128
) -> dict[str, list[tuple[Image.Image, dict]]]:
    """The first `per_character` one-person scenes of each roster character among the scenes of
    `seed` (as `ymn.model.tiny_base_data.synthetic_scene` draws them, natural casting)."""
    from ymn.model.tiny_base_data import synthetic_scene

    found: dict[str, list[tuple[Image.Image, dict]]] = {name: [] for name in CHARACTERS}
    index = 0
    while any(len(scenes) < per_character for scenes in found.values()):
        image, meta = synthetic_scene(seed, index, size)
        index += 1
        name = meta["characters"][0] if meta["n_people"] == 1 else None
        if name in found and len(found[name]) < per_character:
            found[name].append((image.convert("RGB"), meta))
    return found


def shift_look(
    image: Image.Image, name: str, delta: float, rng: np.random.Generator
) -> Image.Image:
    """`image` with every pixel of character `name`'s hair and outfit colours moved `delta` RGB
    units, each colour in its own random direction (clipped to 0-255): a look drawn that far
    off."""
    if delta == 0:
        return image
    arr = np.asarray(image, dtype=np.float32).copy()
    look = CHARACTERS[name]
    for colour in (look.hair, look.outfit):
        direction = rng.normal(size=3)
        exact = np.all(arr == np.array(colour, dtype=np.float32), axis=-1)
        arr[exact] = np.clip(arr[exact] + delta * direction / np.linalg.norm(direction), 0, 255)
    return Image.fromarray(arr.round().astype(np.uint8))
