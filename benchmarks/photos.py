"""Benchmark photos: real photos shipped with scikit-image, at their own size or upscaled to 1-12 MP.

scikit-image's photos are 0.14 to 2 megapixels ("real"). The 1-12 MP set ("upscaled") takes a random
crop of one of them, resizes it with Lanczos to a target size, and saves it as a JPEG; the two sets are
reported separately. Files are cached under the output folder, so later benchmarks reuse them.
"""

from __future__ import annotations

import random
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


def upscaled_photos(out: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct JPEGs of 1 to 12 MP (cycling over MEGAPIXELS), made from random crops."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = None
    paths = []
    for i in range(count):
        megapixels = MEGAPIXELS[i % len(MEGAPIXELS)]
        # Draw everything first: the sequence must not depend on which files are cached already.
        source_index, crop, flip, swap = (
            rng.randrange(len(REAL)),
            rng.uniform(0.6, 1.0),
            rng.random() < 0.5,
            rng.random() < 0.5,
        )
        aspect, quality = rng.choice((4 / 3, 3 / 2, 1.0)), rng.randint(85, 95)
        path = out / f"photo-{seed}-{i:05d}-{megapixels}mp.jpg"
        paths.append(path)
        if path.exists():
            continue
        sources = sources or _sources()
        image = sources[source_index]
        w, h = image.size
        cw, ch = int(w * crop), int(h * crop)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = image.crop((x, y, x + cw, y + ch))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        width = int(np.sqrt(megapixels * 1e6 * aspect))
        height = int(megapixels * 1e6 / width)
        if swap:
            width, height = height, width
        image.resize((width, height), Image.Resampling.LANCZOS).save(path, "JPEG", quality=quality)
    return paths
