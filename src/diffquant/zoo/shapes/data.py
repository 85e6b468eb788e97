"""The procedural caption -> image dataset the ``shapes`` model and its scorer are trained on.

One coloured shape on a flat background, 64x64 by default. A scene has five attributes:

- shape: circle, square, triangle, diamond, cross
- colour (of the shape): red, green, blue, yellow, purple, orange
- background: white, black, gray, blue, green (never the shape's own colour)
- position: a 3x3 grid (top left ... bottom right, center)
- size: small or large (captions), medium (only when the caption names no size)

Captions always name the shape, its colour and the background, and name the size and the position
only sometimes; an unnamed position is the center and an unnamed size is medium, so "a red circle
on a white background" is a medium red circle in the middle (the caption fixes the picture up to a
little jitter of position, size and colour, which keeps the model small and its training short).
Examples::

    a red circle on a white background
    a small red circle at the top left on a blue background
    a large orange cross in the center on a black background

Held out from training (for generalisation): the shape/colour pairs in :data:`HELDOUT_PAIRS`.
Everything here is deterministic given a ``numpy.random.Generator`` seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS = ("white", "black", "gray", "blue", "green")
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
SIZES = ("small", "large")  # what captions can say
SIZE_CLASSES = ("small", "medium", "large")  # what images show (medium: no size named)
ATTRIBUTES = ("shape", "colour", "background", "position", "size")
CHOICES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS, "position": POSITIONS,
    "size": SIZE_CLASSES,
}

RGB = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 85, 215), "yellow": (240, 210, 50),
    "purple": (140, 65, 185), "orange": (245, 140, 35), "white": (245, 245, 245),
    "black": (15, 15, 15), "gray": (128, 128, 128),
}

# (shape, colour) pairs never shown in training: one per shape, one per colour but "red".
HELDOUT_PAIRS = frozenset({("triangle", "green"), ("square", "purple"), ("circle", "orange"),
                           ("diamond", "blue"), ("cross", "yellow")})

# Caption phrase of each grid position, and its centre as a fraction of the image side.
_POSITION_PHRASE = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
_GRID = (0.25, 0.5, 0.75)
# Half-extent of a shape in pixels at 64x64 (scaled with the image size), and the jitter ranges.
_RADIUS = {"small": (5.5, 7.0), "medium": (8.5, 10.0), "large": (12.0, 14.0)}
_CENTRE_JITTER = 3.0
_COLOUR_JITTER = 12
_BACKGROUND_JITTER = 8
_SUPERSAMPLE = 4

# How often each caption form is used in training: (names size, names position) -> weight.
_FORMS = {(True, True): 0.4, (True, False): 0.15, (False, True): 0.2, (False, False): 0.25}


@dataclass(frozen=True)
class Scene:
    """What one image shows, which attributes its caption names, and the drawing jitter."""

    shape: str
    colour: str
    background: str
    position: str
    size: str
    says_size: bool = True
    says_position: bool = True
    dx: float = 0.0  # centre offset, pixels at 64x64
    dy: float = 0.0
    radius: float = 0.0  # 0: the middle of the size's range
    tint: tuple[int, int, int] = (0, 0, 0)  # shape colour offset
    bg_tint: tuple[int, int, int] = (0, 0, 0)

    @property
    def attributes(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ATTRIBUTES}

    @property
    def stated(self) -> dict[str, str]:
        """The attributes the caption names (what adherence is scored on)."""
        out = {"shape": self.shape, "colour": self.colour, "background": self.background}
        if self.says_position:
            out["position"] = self.position
        if self.says_size:
            out["size"] = self.size
        return out

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background,
                       self.position if self.says_position else None,
                       self.size if self.says_size else None)

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return _clip(RGB[self.background], self.bg_tint)

    @property
    def heldout(self) -> bool:
        return (self.shape, self.colour) in HELDOUT_PAIRS


def caption(shape: str, colour: str, background: str, position: str | None = None,
            size: str | None = None) -> str:
    """The caption for these attributes; ``None`` leaves an attribute unnamed."""
    words = [w for w in (size, colour, shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    text = f"{article} {' '.join(words)}"
    if position:
        text += f" {_POSITION_PHRASE[position]}"
    return f"{text} on a {background} background"


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a caption names (the inverse of :func:`caption`; tolerant of word order).

    The colour is the colour word right before the shape (after an optional size), the background
    is the colour word right before "background"; unknown words are ignored.
    """
    words = prompt.lower().replace(",", " ").replace(".", " ").split()
    out: dict[str, str] = {}
    for i, w in enumerate(words):
        if w in SHAPES and "shape" not in out:
            out["shape"] = w
            j = i - 1
            if j >= 0 and words[j] in RGB:
                out["colour"] = words[j]
        elif w in SIZES and "size" not in out:
            out["size"] = w
        elif w == "background" and i > 0 and words[i - 1] in RGB:
            out["background"] = words[i - 1]
    vertical = next((w for w in words if w in ("top", "bottom")), None)
    horizontal = next((w for w in words if w in ("left", "right")), None)
    if vertical or horizontal:
        out["position"] = " ".join(w for w in (vertical, horizontal) if w)
    elif "center" in words or "centre" in words or "middle" in words:
        out["position"] = "center"
    return out


def all_captions(split: str = "train") -> list[str]:
    """Every caption of a split, in a fixed order: "train" (no held-out pair), "heldout", "all"."""
    out = []
    for shape, colour, background in itertools.product(SHAPES, COLOURS, BACKGROUNDS):
        if background == colour:
            continue
        held = (shape, colour) in HELDOUT_PAIRS
        if (split == "train" and held) or (split == "heldout" and not held):
            continue
        for position, size in itertools.product((None, *POSITIONS), (None, *SIZES)):
            out.append(caption(shape, colour, background, position, size))
    return out


def vocabulary() -> list[str]:
    """Every word any caption can use, in a fixed order."""
    words: list[str] = []
    for text in all_captions("all") + ["an a"]:
        for w in text.split():
            if w not in words:
                words.append(w)
    return words


def sample_scene(rng: np.random.Generator, split: str = "train", jitter: bool = True) -> Scene:
    """A random scene. ``split``: "train" avoids held-out pairs, "heldout" uses only them, "all" both."""
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = COLOURS[rng.integers(len(COLOURS))]
        held = (shape, colour) in HELDOUT_PAIRS
        if (split == "train" and held) or (split == "heldout" and not held):
            continue
        background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        if background != colour:
            break
    forms = list(_FORMS)
    says_size, says_position = forms[rng.choice(len(forms), p=list(_FORMS.values()))]
    position = POSITIONS[rng.integers(len(POSITIONS))] if says_position else "center"
    size = SIZES[rng.integers(len(SIZES))] if says_size else "medium"
    if not jitter:
        return Scene(shape, colour, background, position, size, says_size, says_position)
    lo, hi = _RADIUS[size]
    return Scene(
        shape, colour, background, position, size, bool(says_size), bool(says_position),
        dx=float(rng.uniform(-_CENTRE_JITTER, _CENTRE_JITTER)),
        dy=float(rng.uniform(-_CENTRE_JITTER, _CENTRE_JITTER)),
        radius=float(rng.uniform(lo, hi)),
        tint=tuple(int(v) for v in rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3)),  # type: ignore[arg-type]
        bg_tint=tuple(int(v) for v in rng.integers(-_BACKGROUND_JITTER, _BACKGROUND_JITTER + 1, 3)),  # type: ignore[arg-type]
    )


def _clip(rgb: tuple[int, int, int], tint: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c + t))) for c, t in zip(rgb, tint))  # type: ignore[return-value]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, pointing up, centred on its centroid
        R = 1.15 * r
        return [(cx + R * np.cos(a), cy + R * np.sin(a)) for a in np.radians([-90, 30, 150])]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "cross":
        t = 0.33 * r
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels (anti-aliased)."""
    s = size * _SUPERSAMPLE
    scale = s / 64.0
    img = Image.new("RGB", (s, s), scene.background_rgb)
    draw = ImageDraw.Draw(img)
    row, col = divmod(POSITIONS.index(scene.position), 3)
    cx = (_GRID[col] * 64 + scene.dx) * scale
    cy = (_GRID[row] * 64 + scene.dy) * scale
    r = (scene.radius or sum(_RADIUS[scene.size]) / 2) * scale
    fill = _clip(RGB[scene.colour], scene.tint)
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r), fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def batches(seed: int, batch_size: int, split: str = "train", size: int = 64
            ) -> Iterator[tuple[list[Scene], np.ndarray]]:
    """Endless deterministic batches: (scenes, uint8 images of shape (B, size, size, 3))."""
    rng = np.random.default_rng(seed)
    while True:
        scenes = [sample_scene(rng, split) for _ in range(batch_size)]
        yield scenes, np.stack([np.asarray(render(sc, size)) for sc in scenes])
