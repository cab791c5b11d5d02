"""Character-identity probe: is each generated face the character the prompt named? (numpy/scipy)

Character bleeding (the card: success falls as characters per scene rise) is identities
blending or swapping in multi-character scenes. On ymn's synthetic data every roster
character has its own hair and outfit colour (``ymn.data.synthetic.CHARACTERS``), drawn around
the face: a hair cap just outside the face disc (plus twintails, long hair, a ponytail or a
bun) and the torso right below it.
``identify_character`` reads those two zones around a detected face box, assigns each pixel
to the nearest colour of the whole drawing palette (so a roster outfit is never mistaken for a
similar roster hair colour) and picks the character whose hair, then outfit, covers most of
the zones; None when no roster hair is there (unnamed people, noise, real images).

``identity_metrics`` pairs requested faces with detected ones (Hungarian on grid-cell distance,
as the face-grid probe) and scores char_acc (the face shows its requested character) and
bleed_rate (it shows a character requested for another face of the same prompt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from ymn.data.captions import UNKNOWN_CHARACTERS, grid_cell
from ymn.data.synthetic import CHARACTERS, UNKNOWN_HAIR
from ymn.data.synthetic_draw import SKIN, Look, palette_colours
from ymn.probes.facegrid import chebyshev

__all__ = [
    "LookShares",
    "character_of",
    "zone_characters",
    "identify_character",
    "look_shares",
    "identity_metrics",
    "match_faces",
    "palette_neighbours",
]

Box = Sequence[float]
MAX_DISTANCE = 48.0  # RGB distance beyond which a pixel matches no palette colour (noise)
MIN_FRAC = 0.04  # least hair + outfit share a character needs (otherwise: None)
UNNAMED_MIN_FRAC = 0.08  # an unnamed person's hair this visible vetoes a less visible roster hair
HAIR_MARGIN = 0.35  # hair zone: the face box grown by this share of its side (not downwards)
OUTFIT_DEPTH = 0.6  # outfit zone: this share of the face height right below the face


def _palette(roster: Mapping[str, Look]) -> tuple[np.ndarray, list[tuple[str, str | None]]]:
    """Colours (K x 3) and labels: ("hair"|"outfit", name) for the roster, ("unknown_hair", None)
    for unnamed people's hair, ("other", None) for the rest of the drawing palette.

    Roster colours come first so that a colour also used elsewhere keeps its roster label.
    """
    colours: list[tuple[int, int, int]] = []
    labels: list[tuple[str, str | None]] = []
    for kind in ("hair", "outfit"):
        for name, look in roster.items():
            colours.append(getattr(look, kind))
            labels.append((kind, name))
    for hair, _ in UNKNOWN_HAIR:
        if hair not in colours:
            colours.append(hair)
            labels.append(("unknown_hair", None))
    for colour in [SKIN, *palette_colours()]:
        if colour not in colours:
            colours.append(colour)
            labels.append(("other", None))
    return np.array(colours, dtype=np.float32), labels


def palette_neighbours(roster: Mapping[str, Look] = CHARACTERS) -> dict[str, dict[str, Any]]:
    """For each roster colour ("<name> hair" / "<name> outfit"), the nearest other colour of
    the palette the reading assigns pixels to, and its RGB distance: a drawn colour that errs
    by half that distance towards it is read as the neighbour."""
    colours, labels = _palette(roster)
    distance = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    out = {}
    for index, (kind, name) in enumerate(labels):
        if name is None:
            continue
        nearest = int(distance[index].argmin())
        near_kind, near_name = labels[nearest]
        out[f"{name} {kind}"] = {
            "nearest": f"{near_name} {near_kind}" if near_name else near_kind,
            "rgb": [int(v) for v in colours[nearest]],
            "distance": round(float(distance[index, nearest]), 1),
        }
    return out


def _zones(arr: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N x 3) of the hair ring around the face disc and of the outfit strip below it."""
    height, width = arr.shape[:2]
    left, top = int(np.floor(box[0] * width)), int(np.floor(box[1] * height))
    right, bottom = int(np.ceil(box[2] * width)), int(np.ceil(box[3] * height))
    w, h = max(right - left, 1), max(bottom - top, 1)
    margin = max(2, round(HAIR_MARGIN * max(w, h)))
    depth = max(2, round(OUTFIT_DEPTH * max(w, h)))
    x0, y0 = max(left - margin, 0), max(top - margin, 0)
    x1, y1 = min(right + margin, width), min(bottom + depth, height)
    window = arr[y0:y1, x0:x1]
    ys, xs = np.mgrid[y0:y1, x0:x1]
    cx, cy = (left + right - 1) / 2, (top + bottom - 1) / 2
    disc = ((xs - cx) / (w / 2 + 0.5)) ** 2 + ((ys - cy) / (h / 2 + 0.5)) ** 2 <= 1.0
    ring = (ys < bottom) & ~disc
    quarter = w // 4
    below = (ys >= bottom) & (xs >= left + quarter) & (xs < right - quarter)
    return window[ring], window[below]


def _zone_shares(
    pixels: np.ndarray, palette: np.ndarray, labels: list[tuple[str, str | None]], kind: str
) -> dict[str | None, float]:
    """Share of a zone's pixels nearest to each roster character's `kind` colour; under the key
    None, the share nearest to any unnamed person's hair colour."""
    if len(pixels) == 0:
        return {}
    distance = np.linalg.norm(pixels[:, None, :] - palette[None, :, :], axis=-1)
    nearest = distance.argmin(axis=1)
    close = distance[np.arange(len(pixels)), nearest] <= MAX_DISTANCE
    shares: dict[str | None, float] = {None: 0.0}
    for index, (label_kind, name) in enumerate(labels):
        share = float(np.sum(close & (nearest == index)) / len(pixels))
        if label_kind == kind and name is not None:
            shares[name] = share
        elif label_kind == "unknown_hair":
            shares[None] += share
    return shares


LookShares = tuple[dict[str | None, float], dict[str | None, float]]  # hair zone, outfit zone


def look_shares(
    image: Image.Image, box: Box, roster: Mapping[str, Look] = CHARACTERS
) -> LookShares:
    """The colours around a face box (l, t, r, b fractions): the shares of the hair zone and of
    the outfit zone nearest each roster character's hair and outfit colour; under None, the
    share nearest any unnamed person's hair colour."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    hair_pixels, outfit_pixels = _zones(arr, box)
    palette, labels = _palette(roster)
    hair = _zone_shares(hair_pixels, palette, labels, "hair")
    return hair, _zone_shares(outfit_pixels, palette, labels, "outfit")


def character_of(shares: LookShares) -> str | None:
    """The roster character that `look_shares` around a face show, or None.

    Each character scores the share of the hair zone in its hair colour plus the share of the
    outfit zone in its outfit colour; the best score wins if it reaches MIN_FRAC. The outfit
    matters most on small or blurred faces, where outlines cover the thin hair cap. An unnamed
    person's hair colour (the synthetic data's regularization people) covering at least
    UNNAMED_MIN_FRAC of the hair zone rules out every character whose hair shows less.
    """
    hair, outfit = shares
    unnamed = hair.get(None, 0.0)
    scores = {
        name: share + outfit.get(name, 0.0)
        for name, share in hair.items()
        if name is not None and (share >= unnamed or unnamed < UNNAMED_MIN_FRAC)
    }
    return _best_scored(scores)


def zone_characters(
    shares: LookShares, unnamed_label: str | None = None
) -> tuple[str | None, str | None]:
    """The roster character whose hair colour covers most of the hair zone, and the one whose
    outfit colour covers most of the outfit zone (each None below MIN_FRAC): which half of a
    look a face shows, where `character_of` weighs both halves together. With `unnamed_label`,
    the unnamed people's hair colours compete too, and win under that label."""
    hair, outfit = (
        {
            unnamed_label if name is None else name: share
            for name, share in zone.items()
            if name is not None or unnamed_label is not None
        }
        for zone in shares
    )
    return _best_scored(hair), _best_scored(outfit)


def _best_scored(scores: dict[str, float]) -> str | None:
    """The highest-scoring character if its score reaches MIN_FRAC, else None."""
    best = max(scores, key=lambda name: scores[name], default=None)
    return best if best is not None and scores[best] >= MIN_FRAC else None


def identify_character(
    image: Image.Image, box: Box, roster: Mapping[str, Look] = CHARACTERS
) -> str | None:
    """The roster character drawn around a face box (l, t, r, b fractions), or None
    (`character_of` its `look_shares`)."""
    return character_of(look_shares(image, box, roster))


def match_faces(
    target_cells: Sequence[Sequence[int]], found_boxes: Sequence[Box], grid: int = 5
) -> list[tuple[int, int]]:
    """(target index, detection index) pairs: Hungarian on Chebyshev cell distance (the face-
    grid probe's matching), ties broken by the distance of box centres to cell centres, then by
    keeping the left-to-right order (two faces asked of one cell, as `many` in a row asks)."""
    if not len(target_cells) or not len(found_boxes):
        return []
    n, m = len(target_cells), len(found_boxes)
    cost = np.zeros((n, m))
    for i, target in enumerate(target_cells):
        tx, ty = (target[0] + 0.5) / grid, (target[1] + 0.5) / grid
        for j, box in enumerate(found_boxes):
            fx, fy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            cell = grid_cell(box, grid)
            cost[i, j] = chebyshev(tuple(target), cell) + 1e-3 * np.hypot(tx - fx, ty - fy)
            cost[i, j] += 1e-6 * abs(i / n - j / m)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def _ordered_pairs(n_targets: int, n_found: int) -> list[tuple[int, int]]:
    """Without target cells: pair faces in their left-to-right order."""
    return [(i, i) for i in range(min(n_targets, n_found))]


def _rate(hits: int, total: int) -> float:
    return hits / total if total else float("nan")


def identity_metrics(
    requested_names_per_image: Sequence[Sequence[str]],
    detected_boxes_per_image: Sequence[Sequence[Box]],
    images: Sequence[Image.Image] | None = None,
    *,
    target_cells_per_image: Sequence[Sequence[Sequence[int]]] | None = None,
    identified_per_image: Sequence[Sequence[str | None]] | None = None,
    grid: int = 5,
    roster: Mapping[str, Look] = CHARACTERS,
) -> dict[str, Any]:
    """char_acc, bleed_rate, unknown_rate and their breakdown by requested faces per prompt.

    Requested faces (names in face order; names outside the roster are skipped) are paired with
    detections by `match_faces` on target_cells_per_image, else in left-to-right order. Over the
    matched faces: char_acc = share showing the requested character; bleed_rate = share showing
    a character requested for another face of the same prompt (swapped or blended identity);
    unknown_rate = share showing no roster character. order_chance is the char_acc of drawing
    the requested cast in a random order (mean 1 / distinct names). drawn_by_count: per
    requested-face count, the share of requested faces drawn as asked, a face not drawn at all
    counting as a miss (for one-person prompts: the named character drawn). Identities come from
    identified_per_image when given (the runner classifies while it samples), else from
    `identify_character` on images.
    """
    n_images = len(requested_names_per_image)
    if len(detected_boxes_per_image) != n_images:
        raise ValueError(
            f"{n_images} requested-name lists but {len(detected_boxes_per_image)} detection lists"
        )
    if identified_per_image is None:
        if images is None or len(images) != n_images:
            raise ValueError("identity_metrics needs one image (or identity list) per prompt")
        identified_per_image = [
            [identify_character(image, box, roster) for box in boxes]
            for image, boxes in zip(images, detected_boxes_per_image, strict=True)
        ]
    # requested faces -> [matched, correct, bleed, unknown, requested]
    tallies: dict[int, list[int]] = {}
    chance: list[float] = []
    for i, (names, boxes) in enumerate(
        zip(requested_names_per_image, detected_boxes_per_image, strict=True)
    ):
        identities = identified_per_image[i]
        if target_cells_per_image is not None:
            if len(target_cells_per_image[i]) != len(names):
                raise ValueError(
                    f"probe image {i}: {len(names)} requested names but "
                    f"{len(target_cells_per_image[i])} target cells; name every face or none"
                )
            pairs = match_faces(target_cells_per_image[i], boxes, grid)
        else:
            pairs = _ordered_pairs(len(names), len(boxes))
        cast = {n for n in names if n in roster and n not in UNKNOWN_CHARACTERS}
        tally = tallies.setdefault(len(names), [0, 0, 0, 0, 0])
        tally[4] += sum(n in cast for n in names)
        for target, found in pairs:
            wanted, shown = names[target], identities[found]
            if wanted not in cast:
                continue
            tally[0] += 1
            tally[1] += shown == wanted
            tally[2] += shown != wanted and shown in cast
            tally[3] += shown is None
            chance.append(1.0 / len(cast))
    matched, correct, bleed, unknown = (sum(t[k] for t in tallies.values()) for k in range(4))
    return {
        "char_acc": _rate(correct, matched),
        "bleed_rate": _rate(bleed, matched),
        "unknown_rate": _rate(unknown, matched),
        "order_chance": float(np.mean(chance)) if chance else float("nan"),
        "n_matched": matched,
        "by_count": {n: _rate(t[1], t[0]) for n, t in sorted(tallies.items()) if t[0]},
        "bleed_by_count": {n: _rate(t[2], t[0]) for n, t in sorted(tallies.items()) if t[0]},
        "drawn_by_count": {n: _rate(t[1], t[4]) for n, t in sorted(tallies.items()) if t[4]},
    }


def measures_identity(detector: Any, probe: Mapping[str, Any]) -> bool:
    """Whether a probe image gets identities: its prompt names a roster character and faces
    come from the synthetic detector (the classifier reads the synthetic drawing's colours)."""
    from ymn.probes.detectors import SyntheticFaceDetector

    names = probe.get("characters") or []
    return isinstance(detector, SyntheticFaceDetector) and any(n in CHARACTERS for n in names)


def identity_flat_metrics(
    records: Sequence[Mapping[str, Any]], grid: int = 5, prefix: str = "probe/identity"
) -> dict[str, float]:
    """Flat {prefix}/char_acc, bleed_rate, unknown_rate, order_chance, n_matched and per
    requested-face count {prefix}/char_acc/n{k}, {prefix}/bleed_rate/n{k} and {prefix}/drawn/n{k}
    over the probe records that carry "identities" (empty when none does). drawn/n1 is the
    headline "lead drawn" reading; it is what `best_monitor` can select a checkpoint by."""
    scored = [r for r in records if "identities" in r]
    if not scored:
        return {}
    result = identity_metrics(
        [r.get("characters") or [] for r in scored],
        [r["detected_boxes"] for r in scored],
        target_cells_per_image=[r["cells"] for r in scored]
        if all("cells" in r for r in scored)
        else None,
        identified_per_image=[r["identities"] for r in scored],
        grid=grid,
    )
    flat = {
        f"{prefix}/{key}": float(result[key])
        for key in ("char_acc", "bleed_rate", "unknown_rate", "order_chance", "n_matched")
    }
    flat |= {f"{prefix}/char_acc/n{k}": float(v) for k, v in result["by_count"].items()}
    flat |= {f"{prefix}/bleed_rate/n{k}": float(v) for k, v in result["bleed_by_count"].items()}
    flat |= {f"{prefix}/drawn/n{k}": float(v) for k, v in result["drawn_by_count"].items()}
    return flat
