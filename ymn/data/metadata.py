"""Read ASP image metadata (Jan-2023, Dec-2022 and caption-only folders) into one dict shape.

The normalised shape is the one of `ymn/data/CONTRACT.md`. Keys this module does not know
(e.g. `source`, `multiply` added by `ymn-pack`) pass through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# Dec-2022 keys folded into the Jan-2023 ones (never copied to the output).
_DEC2022_KEYS = ("count", "abs_pos", "rel_pos", "max_height_ratio")


class MetadataError(ValueError):
    """A metadata file (or a sample's `json`) that cannot be read as ASP metadata."""


def _fail(source: str, message: str) -> MetadataError:
    return MetadataError(f"{source}: {message}")


def _n_people(value: Any, source: str) -> int | str | None:
    """int, "many", or None (unknown); ASP Dec-2022 stored the count as a string such as "2"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail(source, f"n_people/count must be an int or 'many', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise _fail(source, f"n_people/count must be >= 0, got {value}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if text in ("many", "6+"):
            return "many"
    raise _fail(source, f"n_people/count must be an int or 'many', got {value!r}")


def _legacy_facepos(text: str, source: str) -> list[float]:
    """ASP before 2022-12-24 wrote faces as "fvp TOP BOTTOM fhp LEFT RIGHT" in percent."""
    parts = text.split()
    if len(parts) != 6 or parts[0] != "fvp" or parts[3] != "fhp":
        raise _fail(source, f"facepos string {text!r} is not 'fvp TOP BOTTOM fhp LEFT RIGHT'")
    try:
        top, bottom, left, right = (int(parts[i]) / 100 for i in (1, 2, 4, 5))
    except ValueError as err:
        raise _fail(source, f"facepos string {text!r} holds a non-integer percentage") from err
    return [left, top, right, bottom]


def _facepos(value: Any, source: str) -> list[list[float]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(source, f"facepos must be a list of [left, top, right, bottom], got {value!r}")
    boxes = []
    for box in value:
        if isinstance(box, str):
            boxes.append(_legacy_facepos(box, source))
            continue
        ok = isinstance(box, list | tuple) and len(box) == 4
        if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            raise _fail(source, f"facepos entry {box!r} is not [left, top, right, bottom]")
        boxes.append([float(v) for v in box])
    return boxes


def _str_list(value: Any, key: str, source: str, *, split_commas: bool = False) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(",") if split_commas else [value]
        return [item.strip() for item in items if item.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _fail(source, f"{key} must be a list of strings, got {value!r}")


def _joined(value: Any, key: str, source: str, drop: str) -> str | None:
    """ASP stores copyright/artist as lists; captions join them with a space, minus `drop`."""
    items = [v for v in _str_list(value, key, source) if v != drop]
    return " ".join(items) if items else None


def _optional_str(value: Any, key: str, source: str) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value) or None
    raise _fail(source, f"{key} must be a string, got {value!r}")


def _number(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(source, f"{key} must be a number, got {value!r}")
    return float(value)


def normalize_metadata(raw: Mapping, source: str) -> dict:
    """Turn one ASP metadata mapping (Jan-2023 or Dec-2022 keys) into the contract's dict.

    `source` names the file or sample in error messages. Dec-2022 `count` becomes `n_people`,
    `rel_pos` becomes `facepos`, `max_height_ratio` becomes `fh_ratio`.
    """
    if not isinstance(raw, Mapping):
        raise _fail(source, f"metadata must be a JSON object, got {type(raw).__name__}")
    facepos = _facepos(raw["facepos"] if "facepos" in raw else raw.get("rel_pos"), source)
    n_people = raw["n_people"] if "n_people" in raw else raw.get("count")
    fh_ratio = raw["fh_ratio"] if "fh_ratio" in raw else raw.get("max_height_ratio")
    if fh_ratio is None:
        fh_ratio = max((b[3] - b[1] for b in facepos), default=0.0)
    n_faces = raw.get("n_faces", len(facepos))
    if isinstance(n_faces, bool) or not isinstance(n_faces, int) or n_faces < 0:
        raise _fail(source, f"n_faces must be a non-negative int, got {n_faces!r}")
    cropped = raw.get("cropped", False)
    if not isinstance(cropped, bool):
        raise _fail(source, f"cropped must be true/false, got {cropped!r}")
    caption = raw.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise _fail(source, f"caption must be a string, got {caption!r}")

    out = {k: v for k, v in raw.items() if k not in _DEC2022_KEYS}
    out.update(
        n_faces=n_faces,
        facepos=facepos,
        fh_ratio=_number(fh_ratio, "fh_ratio", source),
        cropped=cropped,
        characters=_str_list(raw.get("characters"), "characters", source),
        general=_optional_str(raw.get("general"), "general", source),
        tags=_str_list(raw.get("tags"), "tags", source, split_commas=True),
        n_people=_n_people(n_people, source),
        copyright=_joined(raw.get("copyright"), "copyright", source, drop="unknown"),
        artist=_joined(raw.get("artist"), "artist", source, drop="anonymous"),
        rating=_optional_str(raw.get("rating"), "rating", source),
        caption=caption,
    )
    return out


def caption_only_metadata(caption: str) -> dict:
    """Metadata of an image that only has a caption: `caption` set, every other key empty."""
    return {
        "n_faces": 0,
        "facepos": [],
        "fh_ratio": 0.0,
        "cropped": False,
        "characters": [],
        "general": None,
        "tags": [],
        "n_people": None,
        "copyright": None,
        "artist": None,
        "rating": None,
        "caption": caption,
    }


def read_json(path: Path) -> dict:
    """Parse a JSON object from `path`; MetadataError naming the file if that fails."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetadataError(f"{path}: cannot read metadata JSON ({err}); fix or delete it") from err
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: metadata must be a JSON object, got {type(data).__name__}")
    return data


def sidecar_paths(image_path: Path) -> tuple[Path, Path]:
    """`NAME.json` and the Dec-2022 `NAME.facedata.json` beside `NAME.ext` (ASP's splitext rule)."""
    stem = image_path.with_suffix("")
    return Path(f"{stem}.json"), Path(f"{stem}.facedata.json")


def _read_caption_file(image_path: Path) -> str:
    """ED1's caption-only rule: NAME.txt, else NAME.caption, else the filename up to its first _."""
    for suffix in (".txt", ".caption"):
        path = image_path.with_suffix(suffix)
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise MetadataError(f"{path}: cannot read caption ({err})") from err
    return image_path.stem.split("_")[0]


def load_metadata(image_path: Path) -> dict:
    """Metadata of one image: its `NAME.json` (merged over a Dec-2022 `NAME.facedata.json` when
    present), the face data alone, or else a caption-only dict from `.txt`/`.caption`/filename.

    Passing a `NAME.json` path itself also works (its sidecar is itself).
    """
    image_path = Path(image_path)
    json_path, facedata_path = sidecar_paths(image_path)
    merged: dict[str, Any] = {}
    sources = []
    if facedata_path.is_file():
        merged.update(read_json(facedata_path))
        sources.append(str(facedata_path))
    if json_path.is_file():
        data = read_json(json_path)
        if "facepos" in data:
            merged.pop("rel_pos", None)  # the sidecar's face order wins over the detector's
        if "count" in data:
            merged.pop("n_people", None)  # Dec-2022: the sidecar's count is the caption's count
        merged.update(data)
        sources.append(str(json_path))
    if not sources:
        return caption_only_metadata(_read_caption_file(image_path))
    return normalize_metadata(merged, " + ".join(sources))
