"""Image validation, decoding and resizing: file bytes in, uint8 pixels of the model's input size out.

The fast path follows the reference transform of open_clip (resize the shortest side with bicubic
antialiasing, then centre-crop) but avoids its waste: JPEGs are decoded at a reduced DCT scale when the
target is much smaller (Pillow's `draft`), only the region that survives the crop is resampled (`box=`), and
everything stays uint8. Normalisation (mean/std) happens on the encoder's device, not here.

Bytes are untrusted: `imagecheck` validates them from their headers before any pixel is decoded (format
allow-list, side limits, pixel budget). Every failure in the three steps (validate, decode, resize)
becomes an EmbeddingError with its code; running out of memory is ResourceExhausted, which `decode_alone`
retries once with no other decode of the process running.
"""

from __future__ import annotations

import gc
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from embedding.errors import EmbeddingError, ErrorCode
from embedding.media.imagecheck import ImageLimits, check_dimensions, check_pixels, open_image
from embedding.media.resize import Preprocess, resize_crop, resize_plan, to_rgb

T = TypeVar("T")


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (height, width, 3) uint8, the model's input size
    width: int  # of the original image, after EXIF orientation
    height: int


def _draft(image: Image.Image, prep: Preprocess) -> float:
    """Ask the JPEG decoder for a reduced DCT scale that still leaves `draft_gap` x the target resolution.

    Returns the factor from full-size to decoded coordinates (1, 1/2, 1/4 or 1/8).
    """
    if image.format != "JPEG" or prep.draft_gap <= 0:
        return 1.0
    # Plan on both orientations (EXIF may transpose the image later) and keep the larger scale.
    scale = prep.draft_gap * max(
        max(new_w / w, new_h / h)
        for w, h in ((image.width, image.height), (image.height, image.width))
        for (new_w, new_h), _ in [resize_plan(w, h, prep)]
    )
    if scale >= 1:
        return 1.0
    full_width = image.width
    request = (math.ceil(image.width * scale), math.ceil(image.height * scale))
    drafted = image.draft("RGB" if image.mode == "RGB" else image.mode, request)
    if drafted is None:  # the decoder declined (an unusual JPEG layout): full scale
        return 1.0
    # The decoder's box is the full image in decoded coordinates: exactly full size / DCT scale.
    return drafted[1][2] / full_width


def _displayed_size(header: tuple[int, int], decoded: tuple[int, int], factor: float) -> tuple[int, int]:
    """The full-scale size as displayed: the header's sides, swapped when the upright decoded image is
    transposed relative to them. Measured rather than taken from the EXIF tag: Pillow's TIFF plugin reports
    the displayed size and transposes on load itself, and a PNG's eXIf chunk may follow its pixels."""
    w, h = header
    dw, dh = decoded
    straight = abs(dw - w * factor) + abs(dh - h * factor)
    swapped = abs(dw - h * factor) + abs(dh - w * factor)
    return (h, w) if swapped < straight else (w, h)


def _load_upright(image: Image.Image, prep: Preprocess, limits: ImageLimits):
    """Decode (at reduced scale where the format allows), apply EXIF orientation, convert to RGB.

    Returns (rgb image, displayed full-scale (width, height), factor from full to decoded coordinates).
    """
    header = image.size
    image.seek(0)  # animated and multi-frame images: the first frame
    factor = _draft(image, prep)
    check_pixels(*image.size, limits)  # the scale that will really be decoded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.load()
    if image.getexif().get(0x0112, 1) != 1:
        image = ImageOps.exif_transpose(image)
    rgb = to_rgb(image, prep.alpha_background)
    width, height = _displayed_size(header, rgb.size, factor)
    if abs(rgb.width - width * factor) > 8 or abs(rgb.height - height * factor) > 8:
        # The decoder produced another size than the header said: trust the pixels.
        width, height = round(rgb.width / factor), round(rgb.height / factor)
        check_dimensions(width, height, limits)
    return rgb, (width, height), factor


_STEPS = {
    "validate": ("validating", ErrorCode.INVALID_IMAGE_FORMAT),
    "decode": ("decoding", ErrorCode.INVALID_IMAGE_FORMAT),
    "resize": ("resizing", ErrorCode.PREPROCESS_FAILED),
}


def _step(step: str, work: Callable[..., T], *args) -> T:
    """Run one step; any exception becomes an EmbeddingError with the step's code."""
    doing, code = _STEPS[step]
    try:
        return work(*args)
    except EmbeddingError:
        raise
    except MemoryError:
        # No exception chaining: the traceback would keep the frames, and their pixels, alive.
        raise EmbeddingError(ErrorCode.RESOURCE_EXHAUSTED, f"out of memory while {doing} the image") from None
    except Image.DecompressionBombError as exc:
        raise EmbeddingError(ErrorCode.INVALID_IMAGE_DIMENSION, f"{doing} the image: {exc}") from None
    except Exception as exc:  # Pillow raises many types for malformed data; never BaseException
        raise EmbeddingError(code, f"{doing} the image failed: {type(exc).__name__}: {exc}") from None


class _Gate:
    """Decodes share the process; a retry after running out of memory has it to itself."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True  # new decodes wait from now on
            self._cond.wait_for(lambda: self._running == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_gate = _Gate()


def _decode(data: bytes, prep: Preprocess, limits: ImageLimits) -> DecodedImage:
    image = _step("validate", open_image, data, limits)
    rgb, (width, height), factor = _step("decode", _load_upright, image, prep, limits)
    pixels = _step("resize", resize_crop, rgb, prep, (width, height), factor)
    return DecodedImage(pixels=pixels, width=width, height=height)


def decode(data: bytes, prep: Preprocess, limits: ImageLimits) -> DecodedImage:
    """Validate, decode and resize one image file. Raises EmbeddingError with the row's error code.

    The reported width and height are the displayed size at full scale (after EXIF orientation),
    whatever scale the decoder used. Out of memory raises ResourceExhausted: retry with `decode_alone`.
    """
    with _gate.shared():
        return _decode(data, prep, limits)


def decode_alone(data: bytes, prep: Preprocess, limits: ImageLimits) -> DecodedImage:
    """`decode` once more after ResourceExhausted: garbage collected first, and no other decode of this
    process runs meanwhile (new ones wait). A second ResourceExhausted is the row's final error."""
    with _gate.exclusive():
        gc.collect()
        return _decode(data, prep, limits)
