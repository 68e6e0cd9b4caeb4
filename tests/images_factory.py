"""Small image files of every kind the job must handle, good and bad, made on the fly for tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from embedding.demo.synthetic import encode, random_spec, render


def shape_image(colour: str = "red", shape: str = "circle", seed: int = 0, side: int = 160) -> Image.Image:
    import random

    return render(random_spec(random.Random(seed), colour, shape, min_side=side, max_side=side))


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg(image: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG whose pixels are stored rotated, with an EXIF tag that says how to display it."""
    stored = image.transpose(Image.Transpose.ROTATE_90)  # orientation 6 displays it rotated back
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(stored, exif=exif.tobytes())


# How to store an upright image so that a viewer applying EXIF orientation N shows it upright again
# (the inverse of the transposition Pillow's ImageOps.exif_transpose applies for N).
_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
ORIENTED_FORMATS = ("jpeg", "png", "webp", "tiff-g4")


def oriented(image: Image.Image, orientation: int, fmt: str) -> bytes:
    """`image` stored transposed, with the orientation tag (EXIF, or TIFF's own tag) that undoes it.

    fmt is one of ORIENTED_FORMATS; "tiff-g4" is a 1-bit CCITT Group 4 TIFF (the image is made 1-bit
    first, so every orientation holds exactly the same pixels).
    """
    if fmt == "tiff-g4":
        image = image.convert("1")
    transpose = _STORED[orientation]
    stored = image.transpose(transpose) if transpose is not None else image.copy()
    buf = io.BytesIO()
    if fmt == "tiff-g4":
        stored.save(buf, "TIFF", compression="group4", tiffinfo={0x0112: orientation})
        return buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 95} if fmt in ("jpeg", "webp") else {}
    stored.save(buf, fmt.upper(), exif=exif.tobytes(), **options)
    return buf.getvalue()


def cmyk_jpeg(image: Image.Image) -> bytes:
    return jpeg_bytes(image.convert("CMYK"))


def png16(image: Image.Image) -> bytes:
    """A 16-bit grayscale PNG with the full 0..65535 range."""
    grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return png_bytes(Image.fromarray(grey))


def palette_png_with_transparency(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    alpha = np.array(rgba)[..., 3]
    alpha[: alpha.shape[0] // 4] = 0  # the top quarter is transparent
    rgba.putalpha(Image.fromarray(alpha))
    return png_bytes(rgba.convert("P", palette=Image.Palette.ADAPTIVE, colors=64))


def animated_gif(frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def webp(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=90)
    return buf.getvalue()


def write(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def sample_file(seed: int = 0) -> bytes:
    """One synthetic sample image file, as `embedding sample` writes it."""
    import random

    spec = random_spec(random.Random(seed), "blue", "star", 120, 300)
    return encode(render(spec), spec)
