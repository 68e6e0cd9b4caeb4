"""The model stages with the real demo model: unit vectors, error rows, batch splitting, CPU threads."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from embedding.config import InferenceConfig, ModelConfig
from embedding.demo import captions
from embedding.demo.quality import spec_pixels
from embedding.demo.synthetic import balanced_specs
from embedding.errors import ErrorCode
from embedding.stages.encode import Encoder, ImageEncodeStage, TextEncodeStage
from embedding.stages.rows import pack, pixels_array, pixels_of, unpack


@pytest.fixture(scope="module")
def inference() -> InferenceConfig:
    return InferenceConfig(device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def stage(inference: InferenceConfig) -> ImageEncodeStage:
    return ImageEncodeStage("demo", ModelConfig(), inference)


def image_batch(stage: ImageEncodeStage, count: int, failed: dict[int, str] | None = None) -> pa.Table:
    """A batch as the decode stage hands it over: ids, pixels and (null unless failed) error columns."""
    prep = stage.encoder.loaded.preprocess
    pixels = [spec_pixels(spec, prep) for spec in balanced_specs(count, seed=11)]
    codes = [(failed or {}).get(i) for i in range(count)]
    return pa.table(
        {
            "image_id": [f"i{i}" for i in range(count)],
            "pixels": pixels_array(pixels, prep.size),
            "error_code": pa.array(codes, pa.string()),
            "error_message": pa.array([c and "decode failed" for c in codes], pa.string()),
            "stage": pa.array([c and "decode" for c in codes], pa.string()),
        }
    )


def test_cpu_inference_uses_every_core_unless_configured(inference: InferenceConfig) -> None:
    Encoder("demo", ModelConfig(), inference)
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    Encoder("demo", ModelConfig(), inference.model_copy(update={"torch_threads": 1}))
    assert torch.get_num_threads() == 1


def test_image_stage_embeds_pending_rows_as_unit_vectors(stage: ImageEncodeStage) -> None:
    batch = image_batch(stage, 10, failed={3: "DecodeFailed"})
    out = stage.process(batch)
    assert "pixels" not in out.column_names
    vectors = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
    assert vectors.shape == (10, 1024)
    norms = np.linalg.norm(vectors, axis=1)
    assert np.allclose(np.delete(norms, 3), 1.0, atol=1e-5)
    assert norms[3] == 0  # the failed row keeps its error and gets no vector
    assert out.column("error_code").to_pylist()[3] == "DecodeFailed"
    # Batching does not change a vector: one image alone gives the same one.
    alone = stage.encoder.encode_pixels(_pixels(batch, stage)[:1])
    assert float(alone[0] @ vectors[0]) > 0.9999


def _pixels(batch: pa.Table, stage: ImageEncodeStage) -> np.ndarray:
    return pixels_of(batch, stage.encoder.loaded.preprocess.size)


def test_a_row_the_model_fails_on_becomes_an_error_row_and_the_rest_are_embedded(
    stage: ImageEncodeStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = image_batch(stage, 8)
    poison = _pixels(batch, stage)[5].copy()
    real = stage.encoder.encode_pixels

    def encode(pixels: np.ndarray) -> np.ndarray:
        if any(np.array_equal(p, poison) for p in pixels):
            raise RuntimeError("planted failure")
        return real(pixels)

    monkeypatch.setattr(stage.encoder, "encode_pixels", encode)
    out = stage.process(batch)
    codes = out.column("error_code").to_pylist()
    assert codes == [None] * 5 + [str(ErrorCode.ENCODE_FAILED)] + [None] * 2
    assert "planted failure" in out.column("error_message").to_pylist()[5]


def test_non_finite_vectors_become_embedding_not_finite(
    stage: ImageEncodeStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = stage.encoder.encode_pixels

    def encode(pixels: np.ndarray) -> np.ndarray:
        vectors = real(pixels)
        vectors[0, 0] = np.nan
        return vectors

    monkeypatch.setattr(stage.encoder, "encode_pixels", encode)
    codes = stage.process(image_batch(stage, 3)).column("error_code").to_pylist()
    assert codes[0] == str(ErrorCode.EMBEDDING_NOT_FINITE)
    assert codes[1:] == [None, None]


def test_text_stage_and_metrics(inference: InferenceConfig) -> None:
    texts = [captions.query("red", "circle", lang) for lang in ("en", "fr", "es", "de")]
    stage = TextEncodeStage("demo", ModelConfig(), inference)
    batch = pa.table(
        {
            "text_id": ["t0", "t1", "t2", "t3"],
            "text": texts,
            "error_code": pa.nulls(4, pa.string()),
            "error_message": pa.nulls(4, pa.string()),
            "stage": pa.nulls(4, pa.string()),
        }
    )
    out = stage.process(batch)
    vectors = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # One concept in four languages lands in one place of the shared space.
    assert (vectors @ vectors.T).min() > 0.5
    assert {"_m_encode_s", "_m_encode_wait_s"} <= set(out.column_names)


def test_the_stage_keeps_packed_units_apart(stage: ImageEncodeStage) -> None:
    """Ray Data hands the stage packed units (one per row); each comes back as its own packed unit."""
    first = image_batch(stage, 3).append_column("unit_id", pa.array(["u1"] * 3))
    second = image_batch(stage, 2).append_column("unit_id", pa.array(["u2"] * 2))
    out = unpack(stage(pack([first, second])))
    assert [t.num_rows for t in out] == [3, 2]
    assert [t.column("unit_id")[0].as_py() for t in out] == ["u1", "u2"]
    assert all("embedding" in t.column_names for t in out)


def test_a_version_whose_width_is_not_its_dim_is_refused_at_load(inference: InferenceConfig) -> None:
    from embedding.errors import ConfigError
    from embedding.models.registry import DEMO_WEIGHTS

    wide = ModelConfig(
        versions={"wide": {"architecture": "embedding-demo", "weights": str(DEMO_WEIGHTS), "dim": 512}}
    )
    with pytest.raises(ConfigError, match=r"1024 dimensions but its dim is 512"):
        Encoder("wide", wide, inference)
