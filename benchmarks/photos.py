"""Benchmark photos: real photos shipped with scikit-image, at their own size or upscaled to 1-12 MP.

scikit-image's photos are 0.14 to 2 megapixels ("real"). The 1-12 MP set ("upscaled") takes a random
crop of one of them, resizes it with Lanczos to a target size, and saves it as a JPEG; the two sets are
reported separately. Files are cached under the output folder, so later benchmarks reuse them.
"""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

REAL = [
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "ihc.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "color.png",
]
MEGAPIXELS = (1, 2, 4, 8, 12)


@cache
def _sources() -> list[Image.Image]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return [Image.open(folder / name).convert("RGB") for name in REAL]


def real_photos(out: Path) -> list[Path]:
    """The shipped photos at their own size, as JPEG (quality 92)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in zip(REAL, _sources(), strict=True):
        path = out / f"real-{Path(name).stem}.jpg"
        if not path.exists():
            image.save(path, "JPEG", quality=92)
        paths.append(path)
    return paths


def upscaled_photos(out: Path, count: int, seed: int = 0, distinct: int = 400) -> list[Path]:
    """`count` JPEGs of 1 to 12 MP (cycling over MEGAPIXELS) made from random crops of the real photos.

    Only the first `distinct` are generated (Lanczos upscaling costs ~0.2 s each here); the rest are hard
    links to them under their own names: every file is still read and decoded in full by whoever reads it.
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    # Every photo's parameters are drawn up front, so they never depend on which files are cached.
    plans = [
        _Plan(
            path=out / f"photo-{seed}-{i:05d}-{MEGAPIXELS[i % len(MEGAPIXELS)]}mp.jpg",
            megapixels=MEGAPIXELS[i % len(MEGAPIXELS)],
            source=rng.randrange(len(REAL)),
            crop=rng.uniform(0.6, 1.0),
            offset=(rng.random(), rng.random()),
            flip=rng.random() < 0.5,
            swap=rng.random() < 0.5,
            aspect=rng.choice((4 / 3, 3 / 2, 1.0)),
            quality=rng.randint(85, 95),
        )
        for i in range(min(count, distinct))
    ]
    return _made(plans, count, lambda i, plan: out / f"photo-{seed}-{i:05d}-{plan.megapixels}mp.jpg")


def library_photos(out: Path, count: int, seed: int = 0, distinct: int = 400) -> list[Path]:
    """`count` photos of 0.3-4 MP, as a photo library holds them: scikit-image's photos at their own size
    where it falls in that range, else rescaled into it, from random crops; 10% saved as PNG, the rest as
    JPEG. As in `upscaled_photos`, only `distinct` are made, the rest hard links under their own names."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    plans = []
    for i in range(min(count, distinct)):
        source = rng.randrange(len(REAL))
        crop = rng.uniform(0.7, 1.0)
        megapixels = rng.uniform(0.3, 4.0)
        png = i % 10 == 9
        plans.append(
            _Plan(
                path=out / f"library-{seed}-{i:05d}.{'png' if png else 'jpg'}",
                megapixels=megapixels,
                source=source,
                crop=crop,
                offset=(rng.random(), rng.random()),
                flip=rng.random() < 0.5,
                swap=False,
                aspect=0.0,  # keep the crop's own aspect (and, where it fits, its own size)
                quality=rng.randint(85, 95),
            )
        )
    return _made(plans, count, lambda i, plan: out / f"library-{seed}-{i:05d}{plan.path.suffix}")


def _made(plans: list[_Plan], count: int, name: Callable[[int, _Plan], Path]) -> list[Path]:
    """Make the planned photos that are missing (in parallel), then hard-link copies up to `count`."""
    missing = [plan for plan in plans if not plan.path.exists()]
    if missing:
        with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
            pool.map(_make, missing)
    paths = [plan.path for plan in plans]
    for i in range(len(plans), count):
        original = plans[i % len(plans)]
        path = name(i, original)
        if not path.exists():
            os.link(original.path, path)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class _Plan:
    path: Path
    megapixels: float
    source: int
    crop: float
    offset: tuple[float, float]
    flip: bool
    swap: bool
    aspect: float
    quality: int


def _make(plan: _Plan) -> None:
    image = _sources()[plan.source]
    w, h = image.size
    cw, ch = int(w * plan.crop), int(h * plan.crop)
    x, y = int(plan.offset[0] * (w - cw)), int(plan.offset[1] * (h - ch))
    image = image.crop((x, y, x + cw, y + ch))
    if plan.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if plan.aspect:  # a given aspect and size
        width = int(np.sqrt(plan.megapixels * 1e6 * plan.aspect))
        height = int(plan.megapixels * 1e6 / width)
        if plan.swap:
            width, height = height, width
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    else:  # the crop's own aspect; its own size when that lies in 0.3-4 MP, else rescaled into the range
        current = image.width * image.height / 1e6
        if not 0.3 <= current <= 4.0:
            scale = np.sqrt(plan.megapixels / current)
            image = image.resize(
                (int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS
            )
    partial = plan.path.with_name(plan.path.name + ".part")
    if plan.path.suffix == ".png":
        image.save(partial, "PNG")
    else:
        image.save(partial, "JPEG", quality=plan.quality)
    partial.rename(plan.path)  # a killed run leaves no truncated photo behind
