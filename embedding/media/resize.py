"""Pixels at a model's input size: the preprocessing a model version asks for (`Preprocess`, from open_clip's
config plus our own choices) and the colour conversion, resize and crop that apply it, for images and video
frames alike. Normalisation (mean/std) happens on the encoder's device, not here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class Choices(Protocol):
    """The config's own preprocessing choices: its `preprocess` section (PreprocessConfig)."""

    draft_gap: float
    alpha_background: tuple[int, int, int]


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

    def with_choices(self, cfg: Choices) -> Preprocess:
        """The model version's preprocessing with the config's own choices (draft gap, alpha background):
        the job, the API and the service all decode with what this returns."""
        return replace(self, draft_gap=cfg.draft_gap, alpha_background=cfg.alpha_background)


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
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


def resize_plan(width: int, height: int, prep: Preprocess) -> tuple[tuple[int, int], tuple[int, int]]:
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
    (new_w, new_h), (left, top) = resize_plan(full_w, full_h, prep)
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
