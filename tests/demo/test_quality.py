"""The shipped demo weights meet the quality bar on images from a seed that training never used."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import open_clip
import pytest

from embedding.demo import quality
from embedding.demo.captions import LANGUAGES
from embedding.models.registry import DEMO_ARCHITECTURE, DEMO_WEIGHTS, register_architectures


@pytest.fixture(scope="module")
def model() -> Any:
    register_architectures()
    return open_clip.create_model(DEMO_ARCHITECTURE, pretrained=str(DEMO_WEIGHTS))


@pytest.fixture(scope="module")
def encoders(model: Any) -> tuple[quality.ImageEncoder, quality.TextEncoder]:
    tokenizer = open_clip.get_tokenizer(DEMO_ARCHITECTURE)
    return quality.model_encoders(model, tokenizer, quality.model_preprocess(model))


@pytest.fixture(scope="module")
def gallery(model: Any) -> quality.Gallery:
    return quality.make_gallery(quality.model_preprocess(model))


@pytest.fixture(scope="module")
def result(model: Any, encoders: Any, gallery: quality.Gallery) -> dict[str, Any]:
    return quality.measure(*encoders, quality.model_preprocess(model), gallery=gallery)


def test_gallery_is_held_out_and_large_enough(gallery: quality.Gallery) -> None:
    meta = json.loads((DEMO_WEIGHTS.parent / "demo.json").read_text())
    assert meta["seed"] != quality.EVAL_SEED
    counts = {label: gallery.labels.count(label) for label in set(gallery.labels)}
    assert len(counts) == 48 and min(counts.values()) >= max(8, quality.TOP_K)


def test_english_text_to_image(result: dict[str, Any]) -> None:
    assert result["precision_at_10"]["en"] >= 0.80, quality.summary(result)
    assert result["per_query"]["en"]["a red circle"] >= 0.8


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_other_languages_text_to_image(result: dict[str, Any], lang: str) -> None:
    assert result["precision_at_10"][lang] >= 0.60, quality.summary(result)


def test_image_to_image_nearest_neighbour(result: dict[str, Any]) -> None:
    assert result["image_to_image"] >= 0.90, quality.summary(result)
    assert result["passed"]


def test_vectors_are_finite_unit_1024(encoders: Any, gallery: quality.Gallery) -> None:
    encode_images, encode_texts = encoders
    for vectors in (encode_images(gallery.pixels[:16]), encode_texts(["a red circle", "ein roter Kreis"])):
        assert vectors.shape[1] == 1024
        assert np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_random_vectors_fail_the_bar(gallery: quality.Gallery, model: Any) -> None:
    rng = np.random.default_rng(0)
    result = quality.measure(
        lambda pixels: rng.normal(size=(len(pixels), 8)),
        lambda texts: rng.normal(size=(len(texts), 8)),
        quality.model_preprocess(model),
        gallery=gallery,
    )
    assert not result["passed"]
    assert result["precision_at_10"]["en"] < 0.2


def test_shipped_files_match_their_metadata() -> None:
    meta = json.loads((DEMO_WEIGHTS.parent / "demo.json").read_text())
    assert meta["architecture"] == DEMO_ARCHITECTURE
    assert meta["sha256"] == hashlib.sha256(DEMO_WEIGHTS.read_bytes()).hexdigest()
    assert DEMO_WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    assert meta["quality"]["passed"]
