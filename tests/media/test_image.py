import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from embedding.errors import EmbeddingError, ErrorCode
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess, resize_crop
from tests import images_factory as f

PREP = Preprocess(size=(224, 224))
LIMITS = ImageLimits()


def reference_pixels(data: bytes, size: int = 224) -> np.ndarray:
    """open_clip's own eval transform, un-normalised back to uint8 levels."""
    transform = open_clip.image_transform(size, is_train=False)
    tensor = transform(Image.open(io.BytesIO(data)))
    mean = torch.tensor(PREP.mean).view(3, 1, 1)
    std = torch.tensor(PREP.std).view(3, 1, 1)
    return ((tensor * std + mean) * 255).round().clamp(0, 255).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("side", [90, 300, 1200, 2600])
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_pixels_match_open_clip_transform(side: int, fmt: str) -> None:
    image = f.shape_image("orange", "star", seed=side, side=side)
    data = f.jpeg_bytes(image) if fmt == "jpeg" else f.png_bytes(image)
    ours = decode(data, PREP, LIMITS).pixels.astype(np.float64)
    mad = np.abs(ours - reference_pixels(data)).mean()
    assert mad <= 3.0, f"mean absolute difference {mad:.2f} levels"


def test_output_is_uint8_of_model_size_and_reports_original_size() -> None:
    image = f.shape_image(side=300).resize((400, 300))
    decoded = decode(f.png_bytes(image), Preprocess(size=(64, 64)), LIMITS)
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (64, 64, 3)
    assert (decoded.width, decoded.height) == (400, 300)


def test_exif_orientation_is_applied() -> None:
    image = f.shape_image("red", "triangle", side=200).resize((240, 160))
    upright = decode(f.jpeg_bytes(image), PREP, LIMITS)
    rotated = decode(f.exif_rotated_jpeg(image), PREP, LIMITS)
    assert (rotated.width, rotated.height) == (240, 160)
    assert np.abs(upright.pixels.astype(int) - rotated.pixels.astype(int)).mean() < 4


def test_cmyk_jpeg_keeps_its_colours() -> None:
    image = f.shape_image("blue", "square", side=200)
    rgb = decode(f.jpeg_bytes(image), PREP, LIMITS).pixels.astype(int)
    cmyk = decode(f.cmyk_jpeg(image), PREP, LIMITS).pixels.astype(int)
    assert np.abs(rgb - cmyk).mean() < 12


def test_16_bit_png_is_scaled_not_clipped() -> None:
    image = f.shape_image("green", "heart", side=200)
    grey8 = np.asarray(image.convert("L").resize((224, 224), Image.Resampling.BICUBIC), dtype=int)
    decoded = decode(f.png16(image), PREP, LIMITS).pixels.astype(int)
    assert np.abs(decoded[..., 0] - grey8).mean() < 3


def test_transparent_palette_png_is_composited_on_white() -> None:
    image = f.shape_image("purple", "cross", side=200)
    decoded = decode(f.palette_png_with_transparency(image), PREP, LIMITS).pixels
    top = decoded[:40]  # transparent rows
    assert top.mean() > 250


def test_animated_gif_uses_first_frame() -> None:
    red = Image.new("RGB", (64, 64), (230, 20, 20))
    blue = Image.new("RGB", (64, 64), (20, 20, 230))
    pixels = decode(f.animated_gif([red, blue]), PREP, LIMITS).pixels.astype(int)
    assert pixels[..., 0].mean() > 180 and pixels[..., 2].mean() < 60


def test_webp_and_grayscale_decode() -> None:
    image = f.shape_image("yellow", "circle", side=150)
    assert decode(f.webp(image), PREP, LIMITS).pixels.shape == (224, 224, 3)
    assert decode(f.png_bytes(image.convert("L")), PREP, LIMITS).pixels.shape == (224, 224, 3)


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", ErrorCode.INVALID_IMAGE_FORMAT),
        (b"this is a text file, not an image\n" * 20, ErrorCode.INVALID_IMAGE_FORMAT),
        (f.jpeg_bytes(f.shape_image(side=400))[:3000], ErrorCode.INVALID_IMAGE_FORMAT),
        (f.png_bytes(Image.new("RGB", (5, 5))), ErrorCode.INVALID_IMAGE_DIMENSION),
        (f.png_bytes(Image.new("RGB", (16001, 12))), ErrorCode.INVALID_IMAGE_DIMENSION),
        (f.png_bytes(Image.new("RGB", (10, 200))), ErrorCode.INVALID_IMAGE_DIMENSION),
        (f.png_bytes(Image.new("RGB", (200, 16000))), ErrorCode.INVALID_IMAGE_DIMENSION),
    ],
    ids=["empty", "text", "truncated-jpeg", "5x5", "16001x12", "side-10", "side-16000"],
)
def test_bad_images_raise_their_code(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(EmbeddingError) as info:
        decode(data, PREP, LIMITS)
    assert info.value.code == code


def test_dimension_limits_are_exclusive_and_configurable() -> None:
    ok = f.png_bytes(Image.new("RGB", (11, 15999)))
    assert decode(ok, PREP, LIMITS).pixels.shape == (224, 224, 3)
    with pytest.raises(EmbeddingError):
        decode(ok, PREP, ImageLimits(min_side=20, max_side=16000))


def test_resize_modes() -> None:
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    padded = resize_crop(wide, Preprocess(size=(64, 64), resize_mode="longest", fill_color=0))
    assert padded[0, 32].tolist() == [0, 0, 0] and padded[32, 32].tolist() == [255, 0, 0]
    squashed = resize_crop(wide, Preprocess(size=(64, 64), resize_mode="squash"))
    assert squashed.shape == (64, 64, 3) and squashed.min(axis=(0, 1)).tolist() == [255, 0, 0]


def photo_files() -> list[bytes]:
    """Real photos shipped with scikit-image, upscaled to 3 MP, as JPEGs."""
    import skimage.data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(skimage.data, name)()).resize((2000, 1500), Image.Resampling.LANCZOS)
        out.append(f.jpeg_bytes(image))
    return out


def test_photo_pixels_match_open_clip_transform_within_3_levels() -> None:
    for data in photo_files():
        ours = decode(data, PREP, LIMITS).pixels.astype(np.float64)
        assert np.abs(ours - reference_pixels(data)).mean() <= 3.0


def test_photo_embeddings_match_the_reference_path_with_the_demo_model() -> None:
    from embedding.models.loading import load_model

    loaded = load_model("demo", device="cpu")
    prep = loaded.preprocess
    transform = open_clip.image_transform(prep.size[0], is_train=False, mean=prep.mean, std=prep.std)
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    files = photo_files()
    with torch.no_grad():
        reference = loaded.model.encode_image(
            torch.stack([transform(Image.open(io.BytesIO(d))) for d in files])
        )
        pixels = torch.from_numpy(np.stack([decode(d, prep, LIMITS).pixels for d in files]))
        ours = loaded.model.encode_image((pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    cosine = torch.nn.functional.cosine_similarity(reference.float(), ours.float())
    assert cosine.min() >= 0.995


# --- issue 11: orientation, format allow-list, pixel budget, every failure with its code ----------


@pytest.fixture(scope="module")
def demo_encoder():
    from embedding.config import InferenceConfig, ModelConfig
    from embedding.stages.encode import Encoder

    return Encoder("demo", ModelConfig(), InferenceConfig(device="cpu"))


@pytest.mark.parametrize("fmt", f.ORIENTED_FORMATS)
def test_every_exif_orientation_embeds_like_the_upright_image(fmt: str, demo_encoder) -> None:
    # 4:1, so that orientations 5-8 of the G4 TIFF hit the old "box can't be empty" crash.
    image = f.shape_image("red", "triangle", side=240).resize((640, 160))
    prep = demo_encoder.loaded.preprocess
    decoded = [decode(f.oriented(image, o, fmt), prep, LIMITS) for o in range(1, 9)]
    assert [(d.width, d.height) for d in decoded] == [(640, 160)] * 8
    vectors = demo_encoder.encode_pixels(np.stack([d.pixels for d in decoded]))
    cosine = vectors @ vectors[0]
    assert cosine.min() >= 0.99, cosine
    # The tag is what turns them upright: the stored pixels of orientation 6 alone are another picture.
    sideways = decode(f.oriented(image.transpose(Image.Transpose.ROTATE_90), 1, fmt), prep, LIMITS)
    assert np.abs(sideways.pixels.astype(int) - decoded[0].pixels.astype(int)).mean() > 10


def test_only_allowed_formats_are_opened() -> None:
    ppm = io.BytesIO()
    f.shape_image(side=64).save(ppm, "PPM")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"
    for data in (ppm.getvalue(), eps):
        with pytest.raises(EmbeddingError) as info:
            decode(data, PREP, LIMITS)
        assert info.value.code == ErrorCode.INVALID_IMAGE_FORMAT and "images.formats" in info.value.message
    with_ppm = ImageLimits(formats=(*LIMITS.formats, "PPM"))
    assert decode(ppm.getvalue(), PREP, with_ppm).pixels.shape == (224, 224, 3)
    png_only = ImageLimits(formats=("PNG",))
    with pytest.raises(EmbeddingError):
        decode(f.jpeg_bytes(f.shape_image(side=64)), PREP, png_only)


def test_the_pixel_budget_counts_pixels_really_decoded() -> None:
    small_budget = ImageLimits(max_pixels=1_000_000)
    wide = f.shape_image(side=400).resize((2000, 1000))  # 2 MP
    with pytest.raises(EmbeddingError) as info:
        decode(f.png_bytes(wide), PREP, small_budget)
    assert info.value.code == ErrorCode.INVALID_IMAGE_DIMENSION and "images.max_pixels" in info.value.message
    # A JPEG decodes at reduced scale (here 1/4: 500 x 250), well within the budget ...
    assert decode(f.jpeg_bytes(wide), PREP, small_budget).width == 2000
    # ... unless reduced-scale decoding is switched off.
    with pytest.raises(EmbeddingError):
        decode(f.jpeg_bytes(wide), Preprocess(size=(224, 224), draft_gap=0), small_budget)


def test_limits_come_from_the_config() -> None:
    from embedding.config import Config

    cfg = Config.model_validate(
        {"images": {"formats": ["png", "ppm"], "max_pixels": 5000}, "limits": {"max_image_side": 900}}
    )
    limits = ImageLimits.from_config(cfg)
    assert limits == ImageLimits(min_side=10, max_side=900, max_pixels=5000, formats=("PNG", "PPM"))
    from embedding.config_file import load_config
    from embedding.errors import ConfigError

    with pytest.raises(ConfigError, match="Pillow cannot open NOPE"):
        load_config(None, ["images.formats=[JPEG, NOPE]"])


@pytest.mark.parametrize(
    "step, target, code",
    [
        ("validate", "open_image", ErrorCode.INVALID_IMAGE_FORMAT),
        ("decode", "to_rgb", ErrorCode.INVALID_IMAGE_FORMAT),
        ("resize", "resize_crop", ErrorCode.PREPROCESS_FAILED),
    ],
)
@pytest.mark.parametrize("error", [RuntimeError("planted"), ValueError("box can't be empty"), MemoryError()])
def test_an_exception_in_any_step_becomes_its_code(
    monkeypatch: pytest.MonkeyPatch, step: str, target: str, code: ErrorCode, error: Exception
) -> None:
    import embedding.media.image as images

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(images, target, fail)
    with pytest.raises(EmbeddingError) as info:
        decode(f.png_bytes(f.shape_image(side=100)), PREP, LIMITS)
    expected = ErrorCode.RESOURCE_EXHAUSTED if isinstance(error, MemoryError) else code
    assert info.value.code == expected
    assert info.value.__cause__ is None  # no chained traceback keeping the frames' pixels alive


def test_out_of_memory_is_retried_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import embedding.media.image as images

    real, calls = images.resize_crop, []

    def once_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "resize_crop", once_out_of_memory)
    data = f.png_bytes(f.shape_image(side=100))
    with pytest.raises(EmbeddingError) as info:
        decode(data, PREP, LIMITS)
    assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert images.decode_alone(data, PREP, LIMITS).pixels.shape == (224, 224, 3)


def test_a_retry_alone_waits_for_running_decodes_and_holds_off_new_ones() -> None:
    import threading

    from embedding.media.image import _Gate

    gate = _Gate()
    alone_in, alone_done, newcomer_in = threading.Event(), threading.Event(), threading.Event()

    def alone() -> None:
        with gate.exclusive():
            alone_in.set()
            alone_done.wait(5)

    def newcomer() -> None:
        with gate.shared():
            newcomer_in.set()

    retry = threading.Thread(target=alone)
    with gate.shared():  # a decode is running
        retry.start()
        assert not alone_in.wait(0.2)  # the retry waits for it
    assert alone_in.wait(5)
    other = threading.Thread(target=newcomer)
    other.start()
    assert not newcomer_in.wait(0.2)  # a new decode waits while the retry runs alone
    alone_done.set()
    assert newcomer_in.wait(5)
    retry.join(5)
    other.join(5)
