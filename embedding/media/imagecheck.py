"""What an image must be before a pixel of it is decoded: an allowed format, sides within the limits,
and a frame small enough for the pixel budget, all read from headers.

Only the allowed formats' Pillow plugins ever see the bytes. The frame that will be decoded is measured
from its header (icon containers' embedded frames are read ahead by `imageheaders`, since Pillow decodes
them while opening or at their embedded size); a file over the limits is refused before decoding. The
budget replaces Pillow's process-wide guard for these calls only: `Image.MAX_IMAGE_PIXELS` is left alone.
"""

from __future__ import annotations

import io
import math
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from embedding.config import DEFAULT_IMAGE_FORMATS
from embedding.errors import EmbeddingError, ErrorCode
from embedding.media.imageheaders import frame_sizes

if TYPE_CHECKING:
    from embedding.config import Config


@dataclass(frozen=True)
class ImageLimits:
    """What an image must be to be decoded: each side strictly between the two bounds, at most
    `max_pixels` decoded, in one of `formats` (Pillow's names)."""

    min_side: int = 10
    max_side: int = 16_000
    max_pixels: int = 100_000_000
    formats: tuple[str, ...] = DEFAULT_IMAGE_FORMATS

    @classmethod
    def from_config(cls, cfg: Config) -> ImageLimits:
        return cls(
            min_side=cfg.limits.min_image_side,
            max_side=cfg.limits.max_image_side,
            max_pixels=cfg.images.max_pixels,
            formats=tuple(cfg.images.formats),
        )


def check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    """Raise InvalidImageDimension unless both sides lie strictly between the limits."""
    for name, side in (("width", width), ("height", height)):
        if not limits.min_side < side < limits.max_side:
            raise EmbeddingError(
                ErrorCode.INVALID_IMAGE_DIMENSION,
                f"image is {width}x{height} px; {name} must be greater than {limits.min_side} "
                f"and less than {limits.max_side}",
            )


def check_pixels(width: int, height: int, limits: ImageLimits, what: str = "image") -> None:
    """Raise InvalidImageDimension when decoding width x height pixels would exceed the budget."""
    if width * height > limits.max_pixels:
        raise EmbeddingError(
            ErrorCode.INVALID_IMAGE_DIMENSION,
            f"{what} is {width}x{height} px = {width * height:,} pixels to decode; "
            f"the budget is {limits.max_pixels:,} (images.max_pixels)",
        )


# JPEG (and MPO, JPEG frames) decode at up to 1/8 scale per side (`draft`); the budget applies to that.
_REDUCIBLE = ("JPEG", "MPO")
_plugins = threading.Lock()
_plugins_ready = False


def _open_restricted(data: bytes, formats: tuple[str, ...]) -> Image.Image:
    """`Image.open` limited to `formats`, without its process-wide pixel guard.

    The guard (`Image.MAX_IMAGE_PIXELS`) is one number for the whole process; our per-call limits replace
    it here (and are stricter by default), and it stays in force for everyone else and inside plugins.
    """
    global _plugins_ready
    if not _plugins_ready:
        with _plugins:
            Image.init()  # registers every plugin; only the allowed ones below ever see the bytes
            _plugins_ready = True
    prefix = data[:16]
    fp = io.BytesIO(data)
    for name in formats:
        factory, accept = Image.OPEN.get(name, (None, None))
        if factory is None:
            continue
        verdict = accept(prefix) if accept else True
        if not verdict or isinstance(verdict, str):
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # as Image.open does: not this format after all
    raise UnidentifiedImageError(f"not an image in an allowed format ({', '.join(formats)})")


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open the bytes lazily and check the decoded frame's size before any pixel is decoded.

    The byte limit is checked where the bytes are read (sources.py), which never reads more than it allows.
    """
    if not data:
        raise EmbeddingError(ErrorCode.INVALID_IMAGE_FORMAT, "file is empty (0 bytes)")
    for width, height in frame_sizes(data, limits.formats):  # icon containers: every embedded frame
        check_dimensions(width, height, limits)
        check_pixels(width, height, limits, "an embedded icon frame")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = _open_restricted(data, limits.formats)
    except UnidentifiedImageError as exc:
        raise EmbeddingError(
            ErrorCode.INVALID_IMAGE_FORMAT,
            f"not a recognised image in an allowed format (images.formats: {', '.join(limits.formats)})",
        ) from exc
    if image.format not in limits.formats:  # a JPEG opener may hand back an MPO, say
        raise EmbeddingError(ErrorCode.INVALID_IMAGE_FORMAT, f"{image.format} is not in images.formats")
    width, height = image.size
    check_dimensions(width, height, limits)
    least = 8 if image.format in _REDUCIBLE else 1  # decode() checks the scale it actually uses
    check_pixels(math.ceil(width / least), math.ceil(height / least), limits)
    return image
