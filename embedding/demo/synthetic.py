"""Deterministic synthetic images: one coloured shape on a plain, slightly noisy background.

The object always lies inside the central square of the image (the part a shortest-side resize and centre
crop keeps), spans at least 30% of that square, and never has the background's colour.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 50, 180),
    "orange": (250, 140, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "beige": (225, 210, 175),
    "sky": (160, 205, 235),
    "brown": (115, 80, 50),
    "teal": (30, 120, 120),
}
CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image; rendering is a pure function of the spec."""

    colour: str
    shape: str
    background: str
    width: int
    height: int
    cx: float  # object centre, in pixels
    cy: float
    radius: float  # circumradius of the object, in pixels
    rotation: float  # degrees
    fmt: str  # "jpeg" or "png"
    quality: int
    noise_seed: int
    jitter: tuple[int, int, int, int, int, int]  # object rgb, background rgb offsets


def random_spec(
    rng: random.Random, colour: str, shape: str, min_side: int = 64, max_side: int = 1024
) -> ImageSpec:
    """A random placement, size, background and file format for one colour and shape."""
    short = round(math.exp(rng.uniform(math.log(min_side), math.log(max_side))))
    aspect = rng.uniform(0.75, 1.0 / 0.75)
    long_side = min(max_side, max(short, round(short * max(aspect, 1 / aspect))))
    width, height = (long_side, short) if aspect >= 1 else (short, long_side)
    side = min(width, height)
    radius = rng.uniform(0.15, 0.35) * side
    x0, y0 = (width - side) / 2, (height - side) / 2
    margin = radius * 1.02 + 1
    cx = rng.uniform(x0 + margin, x0 + side - margin)
    cy = rng.uniform(y0 + margin, y0 + side - margin)
    return ImageSpec(
        colour=colour,
        shape=shape,
        background=rng.choice(sorted(BACKGROUNDS)),
        width=width,
        height=height,
        cx=cx,
        cy=cy,
        radius=radius,
        rotation=rng.uniform(-20, 20),
        fmt="jpeg" if rng.random() < 0.7 else "png",
        quality=rng.randint(80, 95),
        noise_seed=rng.getrandbits(31),
        jitter=tuple(rng.randint(-15, 15) for _ in range(6)),  # type: ignore[arg-type]
    )


def balanced_specs(count: int, seed: int, min_side: int = 64, max_side: int = 1024) -> list[ImageSpec]:
    """`count` specs cycling over every colour x shape class in a seeded order (balanced classes)."""
    rng = random.Random(seed)
    order = list(CLASSES)
    specs = []
    for i in range(count):
        if i % len(order) == 0:
            rng.shuffle(order)
        colour, shape = order[i % len(order)]
        specs.append(random_spec(rng, colour, shape, min_side, max_side))
    return specs


def _outline(shape: str) -> list[tuple[float, float]]:
    """The shape as a polygon in a unit frame (circumradius about 1, centred on 0)."""
    if shape == "circle":
        return [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    if shape == "square":
        h = 1 / math.sqrt(2)
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        a, b = 0.3, 0.95
        return [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    if shape == "heart":
        pts = []
        for t in np.linspace(0, 2 * math.pi, 80, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -(y + 2.5) / 17.0))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def _jittered(rgb: tuple[int, int, int], offsets: tuple[int, ...]) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + o, 0, 255)) for c, o in zip(rgb, offsets, strict=True))  # type: ignore[return-value]


def render(spec: ImageSpec) -> Image.Image:
    """Draw the image of a spec (RGB), supersampled for smooth edges."""
    scale = max(1, min(4, 1024 // max(spec.width, spec.height)))
    size = (spec.width * scale, spec.height * scale)
    image = Image.new("RGB", size, _jittered(BACKGROUNDS[spec.background], spec.jitter[3:]))
    rot = math.radians(spec.rotation)
    cos_r, sin_r = math.cos(rot), math.sin(rot)
    points = [
        (
            (x * cos_r - y * sin_r) * spec.radius * scale + spec.cx * scale,
            (x * sin_r + y * cos_r) * spec.radius * scale + spec.cy * scale,
        )
        for x, y in _outline(spec.shape)
    ]
    ImageDraw.Draw(image).polygon(points, fill=_jittered(COLOURS[spec.colour], spec.jitter[:3]))
    if scale > 1:
        image = image.resize((spec.width, spec.height), Image.Resampling.BOX)
    noise = np.random.default_rng(spec.noise_seed).normal(0, 5, (spec.height, spec.width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, spec: ImageSpec) -> bytes:
    """The file bytes of a rendered image, in the spec's format."""
    buf = io.BytesIO()
    if spec.fmt == "jpeg":
        image.save(buf, "JPEG", quality=spec.quality)
    else:
        image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()
