"""Synthetic pictures for the demo model: one or two coloured shapes on a plain-ish background.

A ``Scene`` is the ground truth (image size, background, and per shape its kind, colour name,
region and geometry); ``render`` draws it. ``sample_scene(rng)`` draws a random scene: image sides
64-512 px (square or not, aspect up to 2.5), a light low-saturation background of any hue (solid
or gradient, with or without noise), shapes in saturated colours with a little jitter, placed in
one of five regions (the four quadrants and the centre), rotated a little. Backgrounds are light
because a tiny vision tower learns outlines far faster when a shape is always darker than what
surrounds it (a dark background flips the sign of every edge). Two shapes always differ in kind, colour
and region, and do not overlap, so every question about them has one answer.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 30),
    "green": (40, 165, 60),
    "blue": (35, 85, 215),
    "purple": (135, 50, 175),
}
# Region -> centre as a fraction of (width, height); the order is the order shapes are listed in.
REGIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "centre": (0.5, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 64, 512, 2.5


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    region: str
    cx: float  # centre, pixels
    cy: float
    r: float  # radius of the circumscribed circle, pixels
    angle: float  # rotation, degrees
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[tuple[int, int, int], tuple[int, int, int], str, float]  # from, to, direction, noise
    shapes: tuple[Shape, ...]  # in REGIONS order

    def find(self, kind: str) -> Shape | None:
        return next((s for s in self.shapes if s.kind == kind), None)


def _polygon(shape: Shape) -> list[tuple[float, float]]:
    if shape.kind == "square":
        corners = [(45 + 90 * i, shape.r) for i in range(4)]
    elif shape.kind == "triangle":
        corners = [(-90 + 120 * i, shape.r) for i in range(3)]
    else:  # five-pointed star: outer and inner corners alternate
        corners = [(-90 + 36 * i, shape.r if i % 2 == 0 else shape.r * 0.45) for i in range(10)]
    pts = []
    for deg, radius in corners:
        a = math.radians(deg + shape.angle)
        pts.append((shape.cx + radius * math.cos(a), shape.cy + radius * math.sin(a)))
    return pts


def render(scene: Scene, seed: int = 0) -> Image.Image:
    """Draw ``scene``; ``seed`` drives the background noise only."""
    (c0, c1, direction, noise) = scene.background
    w, h = scene.width, scene.height
    t = np.linspace(0.0, 1.0, w if direction == "x" else h, dtype=np.float32)
    ramp = t[None, :, None] if direction == "x" else t[:, None, None]
    base = np.asarray(c0, np.float32) * (1 - ramp) + np.asarray(c1, np.float32) * ramp
    pixels = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    if noise > 0:
        pixels = pixels + noise * np.random.default_rng(seed).standard_normal(pixels.shape, dtype=np.float32)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        if s.kind == "circle":
            draw.ellipse((s.cx - s.r, s.cy - s.r, s.cx + s.r, s.cy + s.r), fill=s.rgb)
        else:
            draw.polygon(_polygon(s), fill=s.rgb)
    return img


def token_labels(scene: Scene, rows: int, cols: int, min_cover: float = 0.08) -> np.ndarray:
    """Per cell of a ``rows`` x ``cols`` grid over the picture, the 1-based index of the shape that
    covers most of the cell, if it covers at least ``min_cover`` of it (0: background):
    [rows, cols] uint8. Training-only supervision; edge cells count, as they show the outline."""
    cover = np.zeros((len(scene.shapes) + 1, rows, cols), np.float32)
    for i, s in enumerate(scene.shapes, start=1):
        mask = Image.new("L", (scene.width, scene.height), 0)
        draw = ImageDraw.Draw(mask)
        if s.kind == "circle":
            draw.ellipse((s.cx - s.r, s.cy - s.r, s.cx + s.r, s.cy + s.r), fill=255)
        else:
            draw.polygon(_polygon(s), fill=255)
        cover[i] = np.asarray(mask.resize((cols, rows), Image.Resampling.BOX), np.float32) / 255
    cover[0] = min_cover
    return cover.argmax(0).astype(np.uint8)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    if rng.random() < 0.3:
        return side, side
    other = int(
        np.clip(round(side * rng.uniform(1.2, MAX_ASPECT) ** rng.choice((-1, 1))), MIN_SIDE, MAX_SIDE)
    )
    return (side, other) if rng.random() < 0.5 else (other, side)


def _background(rng: np.random.Generator) -> tuple:
    def colour() -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.72, 1.0))
        return (round(r * 255), round(g * 255), round(b * 255))

    first = colour()
    second = colour() if rng.random() < 0.4 else first
    noise = float(rng.uniform(2, 14)) if rng.random() < 0.4 else 0.0
    return first, second, str(rng.choice(("x", "y"))), noise


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _place(kind: str, colour: str, region: str, r: float, w: int, h: int, rng: np.random.Generator) -> Shape:
    fx, fy = REGIONS[region]
    cx = np.clip((fx + rng.uniform(-0.06, 0.06)) * w, r + 1, w - r - 1)
    cy = np.clip((fy + rng.uniform(-0.06, 0.06)) * h, r + 1, h - r - 1)
    angle = 0.0 if kind == "circle" else float(rng.uniform(-10, 10))
    return Shape(kind, colour, region, float(cx), float(cy), r, angle, _jitter(COLOURS[colour], rng))


def _apart(a: Shape, b: Shape) -> bool:
    gap = a.r + b.r + 2
    return abs(a.cx - b.cx) > gap or abs(a.cy - b.cy) > gap


def sample_scene(rng: np.random.Generator, num_shapes: int | None = None, max_side: int = MAX_SIDE) -> Scene:
    """A random scene with ``num_shapes`` (default: one or two, evenly) shapes."""
    w, h = _image_size(rng)
    w, h = min(w, max_side), min(h, max_side)
    n = num_shapes or int(rng.integers(1, 3))
    kinds = [str(k) for k in rng.choice(SHAPES, size=n, replace=False)]
    colours = [str(c) for c in rng.choice(list(COLOURS), size=n, replace=False)]
    small = min(w, h)
    while True:
        regions = sorted(rng.choice(list(REGIONS), size=n, replace=False), key=list(REGIONS).index)
        lo, hi = (0.18, 0.28) if n == 1 else (0.13, 0.19)
        for _ in range(20):
            shapes = [
                _place(k, c, str(reg), float(rng.uniform(lo, hi) * small), w, h, rng)
                for k, c, reg in zip(kinds, colours, regions, strict=True)
            ]
            if n == 1 or _apart(shapes[0], shapes[1]):
                return Scene(w, h, _background(rng), tuple(shapes))
