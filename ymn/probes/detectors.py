"""Face detectors for the count and face-grid probes.

All detectors share one tiny protocol: ``detect(image) -> [(left, top, right, bottom), ...]``
with box coordinates as fractions of the image (origin top-left), sorted left to right.

- ``SyntheticFaceDetector``: exact for ymn's synthetic scenes (faces are the only pixels of
  the skin colour), tolerant to the mild noise of generated samples.
- ``AnimeFaceDetector``: the classical ``animeface`` detector (offline) for real anime images.
- ``load_detector("package.module:ClassName")``: any user detector with a ``detect`` method.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image
from scipy import ndimage

from ymn.data.synthetic_draw import SKIN

FaceBox = tuple[float, float, float, float]

__all__ = [
    "AnimeFaceDetector",
    "FaceBox",
    "FaceDetector",
    "SyntheticFaceDetector",
    "load_detector",
]


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces: boxes as (left, top, right, bottom) fractions."""

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Return the face boxes found in image, sorted left to right."""
        ...


def _sorted_boxes(boxes: list[FaceBox]) -> list[FaceBox]:
    """Face order of the ASP metadata: by horizontal centre, then top."""
    return sorted(boxes, key=lambda b: (b[0] + b[2], b[1]))


class SyntheticFaceDetector:
    """Connected blobs of (nearly) the skin colour, holes filled, tiny blobs dropped.

    tolerance: largest per-channel difference from ``skin`` still read as skin (0-255).
    min_area_frac: smallest blob kept, as a fraction of the image area (drops noise specks).
    min_fill: smallest blob area / box area kept (a disc fills ~0.79; drops thin streaks).
    """

    def __init__(
        self,
        tolerance: int = 30,
        min_area_frac: float = 0.002,
        min_fill: float = 0.4,
        skin: tuple[int, int, int] = SKIN,
    ) -> None:
        self.tolerance = tolerance
        self.min_area_frac = min_area_frac
        self.min_fill = min_fill
        self.skin = np.array(skin, dtype=np.int16)

    def skin_mask(self, image: Image.Image) -> np.ndarray:
        """Boolean H x W mask of skin-coloured pixels with enclosed holes (eyes) filled."""
        arr = np.asarray(image.convert("RGB"), dtype=np.int16)
        mask = np.abs(arr - self.skin).max(axis=-1) <= self.tolerance
        return ndimage.binary_fill_holes(mask)

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Bounding boxes (fractions, pixel-edge convention) of the skin blobs."""
        mask = self.skin_mask(image)
        height, width = mask.shape
        labels, n = ndimage.label(mask)  # 4-connectivity: outlines keep faces apart
        if n == 0:
            return []
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        min_area = self.min_area_frac * height * width
        boxes = []
        for index, sl in enumerate(ndimage.find_objects(labels), start=1):
            rows, cols = sl
            box_area = (rows.stop - rows.start) * (cols.stop - cols.start)
            if areas[index] < min_area or areas[index] < self.min_fill * box_area:
                continue
            boxes.append(
                (cols.start / width, rows.start / height, cols.stop / width, rows.stop / height)
            )
        return _sorted_boxes(boxes)


class AnimeFaceDetector:
    """The ``animeface`` package (bindings of nagadomi's animeface-2009), boxes as fractions.

    min_likelihood: faces below this detector likelihood are dropped.
    """

    def __init__(self, min_likelihood: float = 0.0) -> None:
        try:
            import animeface
        except ImportError as err:  # pragma: no cover - animeface is a declared dependency
            raise ImportError(
                "AnimeFaceDetector needs the 'animeface' package: pip install animeface"
            ) from err
        self._animeface = animeface
        self.min_likelihood = min_likelihood

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Faces found by animeface in an RGB copy of image."""
        width, height = image.size
        faces = self._animeface.detect(image.convert("RGB"))
        boxes = []
        for face in faces:
            if face.likelihood < self.min_likelihood:
                continue
            pos = face.face.pos
            boxes.append(
                (
                    max(pos.x, 0) / width,
                    max(pos.y, 0) / height,
                    min(pos.x + pos.width, width) / width,
                    min(pos.y + pos.height, height) / height,
                )
            )
        return _sorted_boxes(boxes)


BUILTIN = {"synthetic": SyntheticFaceDetector, "animeface": AnimeFaceDetector}


def load_detector(spec: str, **kwargs: object) -> FaceDetector:
    """Build a detector from "synthetic", "animeface" or "package.module:ClassName".

    kwargs go to the detector's constructor (e.g. tolerance=40 for noisy samples).
    """
    if spec in BUILTIN:
        return BUILTIN[spec](**kwargs)
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(
            f"unknown detector {spec!r}: use one of {sorted(BUILTIN)} or 'package.module:ClassName'"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"detector {spec!r} could not be imported: {err}") from err
    detector = cls(**kwargs)
    if not isinstance(detector, FaceDetector):
        raise TypeError(f"detector {spec!r} has no detect(image) method")
    return detector
