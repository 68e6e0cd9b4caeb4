"""The demo model's quality bar, measured on synthetic images from a seed that training never uses.

Images go through the same path as in the job: rendered, written as real JPEG/PNG bytes, decoded and resized
by `embedding.media.image.decode`. The model is given as two callables, so the project's own encoder can be
checked as well as a bare open_clip model (`model_encoders` builds the callables for one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedding.demo import captions, synthetic
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess

EVAL_SEED = 1_000_003  # never used for training images (train.py refuses it)
PER_CLASS = 12  # more than 10, so a perfect model reaches precision@10 = 1.0
TOP_K = 10
THRESHOLDS = {"en": 0.80, "fr": 0.60, "es": 0.60, "de": 0.60, "image_to_image": 0.90}

ImageEncoder = Callable[[list[np.ndarray]], np.ndarray]
TextEncoder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Gallery:
    pixels: list[np.ndarray]  # uint8 (height, width, 3), the model's input size
    labels: list[tuple[str, str]]  # (colour, shape) of each image


def spec_pixels(spec: synthetic.ImageSpec, prep: Preprocess) -> np.ndarray:
    """Render one spec, encode it as its file format and decode it as the job does."""
    data = synthetic.encode(synthetic.render(spec), spec)
    return decode(data, prep, ImageLimits()).pixels


def make_gallery(prep: Preprocess, seed: int = EVAL_SEED, per_class: int = PER_CLASS) -> Gallery:
    """`per_class` images of every colour x shape class, at the sample data's sizes (64 to 1024 px)."""
    specs = synthetic.balanced_specs(per_class * len(synthetic.CLASSES), seed)
    return Gallery([spec_pixels(s, prep) for s in specs], [(s.colour, s.shape) for s in specs])


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def measure(
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    prep: Preprocess,
    gallery: Gallery | None = None,
    languages: Sequence[str] = captions.LANGUAGES,
) -> dict[str, Any]:
    """Text->image precision@10 per language and image->image nearest-neighbour accuracy.

    Returns {"precision_at_10": {lang: mean}, "image_to_image": accuracy, "per_query": {lang: {query:
    precision}}, "finite": bool, "gallery_size": n, "passed": bool}. Vectors are normalised here, so the
    encoders may return raw or unit vectors.
    """
    gallery = gallery or make_gallery(prep)
    raw_images = np.asarray(encode_images(gallery.pixels))
    labels = np.array([f"{c} {s}" for c, s in gallery.labels])
    finite = bool(np.isfinite(raw_images).all())
    images = _normalise(raw_images)

    precision: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    for lang in languages:
        queries = [captions.query(c, s, lang) for c, s in synthetic.CLASSES]
        raw_texts = np.asarray(encode_texts(queries))
        finite = finite and bool(np.isfinite(raw_texts).all())
        scores = _normalise(raw_texts) @ images.T
        # Stable sort: ties (e.g. identical vectors) resolve by gallery order, the same on every run.
        top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
        hits = labels[top] == np.array([f"{c} {s}" for c, s in synthetic.CLASSES])[:, None]
        per_query[lang] = {q: float(h.mean()) for q, h in zip(queries, hits, strict=True)}
        precision[lang] = float(hits.mean())

    similarity = images @ images.T
    np.fill_diagonal(similarity, -np.inf)  # the nearest *other* image
    nearest = similarity.argmax(axis=1)
    image_to_image = float((labels[nearest] == labels).mean())

    passed = finite and image_to_image >= THRESHOLDS["image_to_image"]
    passed = passed and all(precision[lang] >= THRESHOLDS[lang] for lang in languages if lang in THRESHOLDS)
    return {
        "precision_at_10": precision,
        "image_to_image": image_to_image,
        "per_query": per_query,
        "finite": finite,
        "gallery_size": len(gallery.pixels),
        "passed": passed,
    }


def model_preprocess(model: Any) -> Preprocess:
    """The demo version's preprocessing: open_clip's defaults at the model's own image size."""
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Preprocess(size=size)  # Preprocess defaults are open_clip's (OPENAI mean/std, bicubic, shortest)


def model_encoders(
    model: Any, tokenizer: Any, prep: Preprocess, batch_size: int = 256
) -> tuple[ImageEncoder, TextEncoder]:
    """Callables for `measure` around an open_clip model, fed as the job feeds it (uint8, then mean/std)."""
    import torch

    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)

    @torch.no_grad()
    def encode_images(pixels: list[np.ndarray]) -> np.ndarray:
        model.eval()
        out = []
        for i in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(np.stack(pixels[i : i + batch_size])).permute(0, 3, 1, 2)
            out.append(model.encode_image((batch.float() / 255 - mean) / std, normalize=True))
        return torch.cat(out).numpy()

    @torch.no_grad()
    def encode_texts(texts: list[str]) -> np.ndarray:
        model.eval()
        return model.encode_text(tokenizer(texts), normalize=True).numpy()

    return encode_images, encode_texts


def measure_model(
    model: Any, tokenizer: Any, prep: Preprocess | None = None, **kwargs: Any
) -> dict[str, Any]:
    """`measure` for an open_clip model and its tokenizer."""
    prep = prep or model_preprocess(model)
    return measure(*model_encoders(model, tokenizer, prep), prep, **kwargs)


def summary(result: dict[str, Any]) -> str:
    """One line of the headline figures."""
    p = ", ".join(f"{lang} {v:.3f}" for lang, v in result["precision_at_10"].items())
    return f"precision@10: {p}; image->image: {result['image_to_image']:.3f}; passed: {result['passed']}"
