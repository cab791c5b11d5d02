"""Scene model and drawing for the synthetic multi-character dataset.

Everything is flat-coloured and drawn without anti-aliasing, so exactly one colour, ``SKIN``,
marks faces: no other palette colour comes near it (see ``palette_colours``), which lets
``ymn.probes.detectors.SyntheticFaceDetector`` recover every face exactly. Geometry in the
dataclasses is in fractions of the (square) image side, so one spec renders at any size.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

SKIN: RGB = (250, 212, 172)
HAND: RGB = (214, 150, 112)  # a different tint: hand close-ups must never read as faces
OUTLINE: RGB = (45, 35, 40)
MOUTH: RGB = (170, 60, 60)
EYES: tuple[RGB, ...] = ((40, 60, 120), (40, 100, 60), (90, 50, 30), (120, 30, 40))
OUTFITS: tuple[RGB, ...] = (
    (60, 150, 90),
    (240, 140, 40),
    (245, 210, 60),
    (210, 50, 60),
    (130, 70, 170),
    (60, 90, 180),
    (40, 50, 110),
    (240, 240, 240),
    (0, 150, 140),
    (150, 150, 150),
)
PANTS: tuple[RGB, ...] = ((50, 50, 70), (90, 70, 50), (30, 80, 60))
BACKPACK: RGB = (200, 90, 40)

# setting -> sky/wall, far mountains, near mountains, snow, ground/floor, cloud/window/sparkle
SETTINGS: dict[str, tuple[RGB, RGB, RGB, RGB, RGB, RGB]] = {
    "day": (
        (140, 200, 245),
        (110, 130, 175),
        (80, 140, 90),
        (238, 242, 252),
        (110, 165, 80),
        (255, 255, 255),
    ),
    "sunset": (
        (240, 140, 90),
        (140, 90, 130),
        (90, 70, 100),
        (180, 160, 220),
        (90, 80, 60),
        (230, 120, 140),
    ),
    "night": (
        (35, 45, 100),
        (50, 55, 90),
        (30, 50, 45),
        (150, 160, 190),
        (35, 55, 35),
        (70, 80, 130),
    ),
    "indoor": (
        (170, 120, 80),
        (100, 70, 40),
        (100, 70, 40),
        (100, 70, 40),
        (120, 80, 50),
        (150, 200, 240),
    ),
    "pastel": (
        (200, 190, 240),
        (180, 235, 210),
        (190, 220, 250),
        (190, 220, 250),
        (180, 235, 210),
        (255, 255, 255),
    ),
}
HAIR_STYLES = ("twintails", "bob cut", "long hair", "ponytail", "hair bun", "short hair")


@dataclass(frozen=True)
class Look:
    """How one person is drawn: a roster character or an unnamed person ("unknown")."""

    name: str
    hair: RGB
    hair_tag: str
    style: str
    outfit: RGB
    eyes: RGB
    gender: str = "girl"


@dataclass(frozen=True)
class Person:
    """A person whose face disc has centre (cx, cy) and diameter d (fractions of the side)."""

    look: Look
    cx: float
    cy: float
    d: float
    pants: RGB = PANTS[0]
    backpack: bool = False


@dataclass(frozen=True)
class Mountain:
    """A triangle from (left, base) over (peak_x, peak_y) to (right, base); layer 0 is far."""

    left: float
    peak_x: float
    peak_y: float
    right: float
    base: float
    layer: int


@dataclass(frozen=True)
class Background:
    """Setting name (a key of SETTINGS), horizon height, mountains and round decorations."""

    setting: str
    horizon: float
    mountains: tuple[Mountain, ...] = ()
    blobs: tuple[tuple[float, float, float], ...] = ()  # clouds / sparkles: (cx, cy, r)


@dataclass(frozen=True)
class Hand:
    """An open hand close-up: palm centre, palm width (fractions), rotation in degrees."""

    cx: float
    cy: float
    width: float
    angle: float
    sleeve: RGB


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to draw one image; ``kind`` names the dataset branch."""

    kind: str
    background: Background
    people: tuple[Person, ...] = ()
    hands: tuple[Hand, ...] = ()
    outline: bool = True


def palette_colours() -> list[RGB]:
    """Every colour the drawing uses besides SKIN (for the skin-separation check)."""
    colours = [HAND, OUTLINE, MOUTH, BACKPACK, *EYES, *OUTFITS, *PANTS]
    for setting in SETTINGS.values():
        colours.extend(setting)
    return colours


def face_box_px(person: Person, size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box [x0, y0, x1, y1] of a person's face disc, outline included."""
    half = person.d * size / 2
    x0 = round(person.cx * size - half)
    y0 = round(person.cy * size - half)
    return x0, y0, x0 + max(round(person.d * size), 1) - 1, y0 + max(round(person.d * size), 1) - 1


def draw_scene(spec: SceneSpec, size: int) -> Image.Image:
    """Render a scene: background, then every hair/body, then every face on top."""
    image = Image.new("RGB", (size, size), SETTINGS[spec.background.setting][0])
    draw = ImageDraw.Draw(image)
    draw_background(draw, spec.background, size)
    outline = OUTLINE if spec.outline else None
    for person in sorted(spec.people, key=lambda p: p.d):  # larger people are nearer: drawn last
        draw_person_back(draw, person, size, outline)
    for person in spec.people:
        draw_face(draw, person, size, outline)
    for hand in spec.hands:
        image = draw_hand(image, hand, outline)
    return image


def _px(values: tuple[float, ...] | list[float], size: int) -> list[int]:
    return [round(v * size) for v in values]


def draw_background(draw: ImageDraw.ImageDraw, bg: Background, size: int) -> None:
    """Sky or wall, mountains with snow caps (or a window indoors), ground, clouds."""
    sky, far, near, snow, ground, blob = SETTINGS[bg.setting]
    if bg.setting == "indoor":
        w0, w1 = round(0.2 * size), round(0.7 * size)
        draw.rectangle([w0, round(0.12 * size), w1, round(bg.horizon * size * 0.8)], fill=blob)
        draw.rectangle([w0, round(0.12 * size), w1, round(bg.horizon * size * 0.8)], outline=far)
    for m in sorted(bg.mountains, key=lambda m: m.layer):
        colour = far if m.layer == 0 else near
        pts = [(m.left, m.base), (m.peak_x, m.peak_y), (m.right, m.base)]
        draw.polygon([tuple(_px(p, size)) for p in pts], fill=colour)
        if m.layer == 0:  # snow cap: the top quarter of the same triangle
            f = 0.28
            cap = [
                (m.peak_x + (m.left - m.peak_x) * f, m.peak_y + (m.base - m.peak_y) * f),
                (m.peak_x, m.peak_y),
                (m.peak_x + (m.right - m.peak_x) * f, m.peak_y + (m.base - m.peak_y) * f),
            ]
            draw.polygon([tuple(_px(p, size)) for p in cap], fill=snow)
    draw.rectangle([0, round(bg.horizon * size), size, size], fill=ground)
    for cx, cy, r in bg.blobs:
        draw.ellipse(_px((cx - r, cy - r * 0.6, cx + r, cy + r * 0.6), size), fill=blob)
        draw.ellipse(_px((cx - r * 0.5, cy - r, cx + r * 0.3, cy + r * 0.2), size), fill=blob)


def draw_person_back(draw: ImageDraw.ImageDraw, p: Person, size: int, outline: RGB | None) -> None:
    """Hair behind the head, then legs, backpack, torso and sleeves below the face."""
    look, d, cx, cy = p.look, p.d, p.cx, p.cy
    width = max(1, round(d * size / 16))
    hair = look.hair

    def ellipse(box: tuple[float, ...], fill: RGB) -> None:
        draw.ellipse(_px(box, size), fill=fill, outline=outline, width=width)

    if look.style in ("long hair",):
        draw.rounded_rectangle(
            _px((cx - 0.62 * d, cy - 0.6 * d, cx + 0.62 * d, cy + 1.25 * d), size),
            radius=max(1, round(0.4 * d * size)),
            fill=hair,
            outline=outline,
            width=width,
        )
    if look.style == "twintails":
        ellipse((cx - 1.0 * d, cy - 0.1 * d, cx - 0.5 * d, cy + 1.0 * d), hair)
        ellipse((cx + 0.5 * d, cy - 0.1 * d, cx + 1.0 * d, cy + 1.0 * d), hair)
    if look.style == "ponytail":
        ellipse((cx + 0.35 * d, cy - 0.55 * d, cx + 0.95 * d, cy + 0.7 * d), hair)
    if look.style == "hair bun":
        ellipse((cx - 0.28 * d, cy - 0.9 * d, cx + 0.28 * d, cy - 0.35 * d), hair)
    # the cap of hair around the head, slightly larger than the face
    grow = 0.66 if look.style == "bob cut" else 0.6
    ellipse(
        (cx - grow * d, cy - 0.66 * d, cx + grow * d, cy + (0.55 if grow > 0.6 else 0.3) * d), hair
    )
    top = cy + 0.42 * d
    legs = (cx - 0.4 * d, top + 1.4 * d, cx + 0.4 * d, top + 2.6 * d)
    draw.rectangle(_px(legs, size), fill=p.pants, outline=outline, width=width)
    if p.backpack:
        pack = (cx - 0.75 * d, top + 0.15 * d, cx + 0.75 * d, top + 1.3 * d)
        draw.rounded_rectangle(_px(pack, size), radius=max(1, round(0.2 * d * size)), fill=BACKPACK)
    torso = [
        (cx - 0.35 * d, top),
        (cx + 0.35 * d, top),
        (cx + 0.65 * d, top + 1.6 * d),
        (cx - 0.65 * d, top + 1.6 * d),
    ]
    draw.polygon([tuple(_px(t, size)) for t in torso], fill=look.outfit, outline=outline)
    for side in (-1, 1):
        arm = [
            (cx + side * 0.3 * d, top + 0.05 * d),
            (cx + side * 0.5 * d, top + 0.05 * d),
            (cx + side * 0.95 * d, top + 1.2 * d),
            (cx + side * 0.75 * d, top + 1.3 * d),
        ]
        draw.polygon([tuple(_px(a, size)) for a in arm], fill=look.outfit, outline=outline)


def draw_face(draw: ImageDraw.ImageDraw, p: Person, size: int, outline: RGB | None) -> None:
    """The face disc in SKIN (dark outline unless outline-free), two eyes and a mouth."""
    x0, y0, x1, y1 = face_box_px(p, size)
    dpx = x1 - x0 + 1
    width = max(1, round(dpx / 16))
    draw.ellipse([x0, y0, x1, y1], fill=SKIN, outline=outline, width=width)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ew, eh = max(1.0, 0.07 * dpx), max(1.0, 0.11 * dpx)
    for side in (-1, 1):
        ex = cx + side * 0.2 * dpx
        draw.ellipse(
            [round(ex - ew), round(cy - eh), round(ex + ew), round(cy + eh)], fill=p.look.eyes
        )
    if dpx >= 16:
        mw = 0.08 * dpx
        my = round(cy + 0.27 * dpx)
        draw.line([round(cx - mw), my, round(cx + mw), my], fill=MOUTH, width=max(1, width))


def draw_hand(image: Image.Image, hand: Hand, outline: RGB | None) -> Image.Image:
    """An open hand with sleeve, drawn upright on a layer, rotated (nearest) and pasted."""
    size = image.width
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w = hand.width
    cx, cy = hand.cx, hand.cy
    width = max(1, round(w * size / 20))
    fill = (*HAND, 255)
    line = (*outline, 255) if outline else None
    sleeve = (cx - 0.45 * w, cy + 0.35 * w, cx + 0.45 * w, cy + 2.0 * w)
    draw.rectangle(_px(sleeve, size), fill=(*hand.sleeve, 255), outline=line, width=width)
    fw = 0.19 * w
    for i, length in enumerate((0.75, 0.9, 0.85, 0.65)):
        fx = cx - 0.4 * w + i * 0.27 * w
        finger = (fx - fw / 2, cy - 0.3 * w - length * w, fx + fw / 2, cy)
        draw.rounded_rectangle(
            _px(finger, size), radius=max(1, round(fw * size / 2)), fill=fill, outline=line
        )
    thumb = (cx + 0.3 * w, cy - 0.35 * w, cx + 0.85 * w, cy - 0.1 * w)
    draw.rounded_rectangle(
        _px(thumb, size), radius=max(1, round(0.12 * w * size)), fill=fill, outline=line
    )
    palm = (cx - 0.5 * w, cy - 0.45 * w, cx + 0.5 * w, cy + 0.45 * w)
    draw.rounded_rectangle(
        _px(palm, size), radius=max(1, round(0.2 * w * size)), fill=fill, outline=line, width=width
    )
    centre = (round(cx * size), round(cy * size))
    layer = layer.rotate(hand.angle, resample=Image.Resampling.NEAREST, center=centre)
    image.paste(layer, (0, 0), layer)
    return image
