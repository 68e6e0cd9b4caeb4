"""Image validation, decoding and resizing: file bytes in, uint8 pixels of the model's input size out.

The fast path follows the reference transform of open_clip (resize the shortest side with bicubic
antialiasing, then centre-crop) but avoids its waste: JPEGs are decoded at a reduced DCT scale when the
target is much smaller (Pillow's `draft`), only the region that survives the crop is resampled (`box=`), and
everything stays uint8. Normalisation (mean/std) happens on the encoder's device, not here.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedding.errors import EmbeddingError, ErrorCode

# Our own dimension limits replace Pillow's decompression-bomb guard: a header with sides under the
# limits is safe to decode, and a larger one is refused before decoding.
Image.MAX_IMAGE_PIXELS = None

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocess:
    """How a model version wants its pixels (open_clip's preprocessing config, plus our own choices)."""

    size: tuple[int, int] = (224, 224)  # (height, width)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shortest (resize + centre crop), longest (fit + pad) or squash
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    fill_color: int = 0
    # Transparent pixels are composited on this colour (open_clip would keep whatever RGB lies under alpha).
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    # JPEG DCT scaling keeps at least this factor of the target resolution before the final resample.
    draft_gap: float = 2.0


@dataclass(frozen=True)
class ImageLimits:
    """The pixel limits of DESIGN.md: each side strictly between the two bounds."""

    min_side: int = 10
    max_side: int = 16_000


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (height, width, 3) uint8, the model's input size
    width: int  # of the original image, after EXIF orientation
    height: int


def check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    """Raise InvalidImageDimension unless both sides lie strictly between the limits."""
    for name, side in (("width", width), ("height", height)):
        if not limits.min_side < side < limits.max_side:
            raise EmbeddingError(
                ErrorCode.INVALID_IMAGE_DIMENSION,
                f"image is {width}x{height} px; {name} must be greater than {limits.min_side} "
                f"and less than {limits.max_side}",
            )


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open the bytes lazily and check the header's dimensions before any pixel is decoded.

    The byte limit is checked where the bytes are read (sources.py), which never reads more than it allows.
    """
    if not data:
        raise EmbeddingError(ErrorCode.INVALID_IMAGE_FORMAT, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise EmbeddingError(ErrorCode.INVALID_IMAGE_FORMAT, "not a recognised image format") from exc
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise EmbeddingError(ErrorCode.INVALID_IMAGE_FORMAT, f"cannot read image header: {exc}") from exc
    check_dimensions(*image.size, limits)
    return image


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit scaled down, alpha composited, CMYK and palettes converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image)
        # 16-bit data uses the full 0..65535 range; 32-bit "I" from PNG holds 16-bit values too.
        arr = (arr.astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(arr, "L")
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8), "L")
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        base = Image.new("RGB", image.size, background)
        base.paste(image, mask=image.getchannel("A"))
        return base
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_plan(width: int, height: int, prep: Preprocess) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized width, height) and the (left, top) of the output window in resized coordinates.

    Mirrors torchvision's Resize(int) + CenterCrop, including its int() and round() choices, so the
    pixels match open_clip's transform; a negative offset means padding (resize_mode "longest").
    """
    out_h, out_w = prep.size
    if prep.resize_mode == "squash":
        return (out_w, out_h), (0, 0)
    if prep.resize_mode == "longest":
        scale = min(out_w / width, out_h / height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    elif out_h == out_w:
        short, long_ = (width, height) if width <= height else (height, width)
        new_short, new_long = out_w, int(out_w * long_ / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    else:
        scale = max(out_w / width, out_h / height)
        new_w, new_h = round(width * scale), round(height * scale)
    left = round((new_w - out_w) / 2.0)  # Python rounds half to even, as torchvision does
    top = round((new_h - out_h) / 2.0)
    return (new_w, new_h), (left, top)


def resize_crop(
    image: Image.Image, prep: Preprocess, full_size: tuple[int, int] | None = None, factor: float = 1.0
) -> np.ndarray:
    """Resize and crop (or pad) an RGB image to the model's input size; uint8 (height, width, 3).

    `full_size` and `factor` describe an image decoded at reduced scale: the plan (sizes, rounding, crop)
    is made on the full-size image, as the reference transform makes it, and mapped onto the reduced one
    (full-size coordinate x is `x * factor` there), so the crop window falls on exactly the same place.
    """
    out_h, out_w = prep.size
    full_w, full_h = full_size or image.size
    (new_w, new_h), (left, top) = _resize_plan(full_w, full_h, prep)
    sx, sy = full_w / new_w * factor, full_h / new_h * factor
    # The source region that maps onto the output window; resampling only it gives the same pixels
    # as resizing everything and cropping afterwards, with the same filter support.
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + out_w, new_w), min(top + out_h, new_h)
    box = (x0 * sx, y0 * sy, min(x1 * sx, image.width), min(y1 * sy, image.height))
    resample = _RESAMPLE[prep.interpolation]
    region = image.resize((x1 - x0, y1 - y0), resample, box=box)
    if (x1 - x0, y1 - y0) == (out_w, out_h):
        return np.asarray(region)
    canvas = Image.new("RGB", (out_w, out_h), (prep.fill_color,) * 3)
    canvas.paste(region, (x0 - left, y0 - top))
    return np.asarray(canvas)


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
        for (new_w, new_h), _ in [_resize_plan(w, h, prep)]
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


def decode(data: bytes, prep: Preprocess, limits: ImageLimits) -> DecodedImage:
    """Validate, decode and resize one image file. Raises EmbeddingError with the row's error code.

    The reported width and height are the displayed size at full scale (after EXIF orientation),
    whatever scale the decoder used.
    """
    image = open_image(data, limits)
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        factor = _draft(image, prep)
        image.seek(0)  # animated images: the first frame
        image.load()
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image, prep.alpha_background)
    except EmbeddingError:
        raise
    except Exception as exc:  # truncated data, corrupt streams, unsupported codecs
        raise EmbeddingError(ErrorCode.INVALID_IMAGE_FORMAT, f"cannot decode image: {exc}") from exc
    return DecodedImage(pixels=resize_crop(rgb, prep, (width, height), factor), width=width, height=height)
