"""The model registry: built-in versions, loading `demo`, clear failures, config-added versions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from embedding.config import ModelConfig, ModelVersionSpec
from embedding.errors import ConfigError
from embedding.models.loading import load_model
from embedding.models.registry import (
    BUILTIN_VERSIONS,
    DEMO_WEIGHTS,
    WeightsUnavailable,
    all_versions,
    check_available,
)


def test_built_in_versions_of_the_design() -> None:
    expected = {
        "2023-04-15": ("xlm-roberta-large-ViT-H-14", "frozen_laion5b_s13b_b90k"),
        "2022-04-11": ("ViT-H-14", "laion2b_s32b_b79k"),
        "rn50-openai": ("RN50", "openai"),
        "demo": ("embedding-demo", str(DEMO_WEIGHTS)),
    }
    assert {k: (v.architecture, v.weights) for k, v in BUILTIN_VERSIONS.items()} == expected
    assert all(v.dim == 1024 for v in BUILTIN_VERSIONS.values())


def test_demo_loads_with_preprocessing_and_tokenizer() -> None:
    loaded = load_model("demo", device="cpu")
    assert loaded.preprocess.size == (64, 64) and loaded.preprocess.interpolation == "bicubic"
    assert loaded.weights_sha256 and len(loaded.weights_sha256) == 64
    tokens = loaded.tokenizer(["a red circle", "un cercle rouge"])
    with torch.no_grad():
        text = loaded.model.encode_text(tokens)
        image = loaded.model.encode_image(torch.zeros(1, 3, 64, 64))
    assert text.shape == (2, 1024) and image.shape == (1, 1024)
    assert np.isfinite(text.numpy()).all()


@pytest.mark.parametrize("version", ["2023-04-15", "2022-04-11", "rn50-openai"])
def test_unavailable_weights_fail_at_once_with_what_to_do(version: str) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable) as info:
        load_model(version, device="cpu")
    assert time.monotonic() - started < 5  # no network retries
    message = str(info.value)
    assert version in message and "huggingface-cli download" in message and "weights" in message


def test_config_added_version_and_missing_file(tmp_path: Path) -> None:
    cfg = ModelConfig(
        versions={
            "mine": ModelVersionSpec(
                architecture="embedding-demo", weights=str(DEMO_WEIGHTS), languages=["en"]
            ),
            "gone": ModelVersionSpec(
                architecture="embedding-demo", weights=str(tmp_path / "absent.safetensors")
            ),
        }
    )
    assert set(all_versions(cfg)) >= {"mine", "gone", "demo"}
    assert load_model("mine", cfg, device="cpu").spec.languages == ["en"]
    with pytest.raises(WeightsUnavailable, match=r"absent\.safetensors"):
        check_available("gone", cfg)
    with pytest.raises(ConfigError, match="unknown model version 'nope'"):
        check_available("nope", cfg)


def test_wrong_checksum_is_refused() -> None:
    cfg = ModelConfig(
        versions={
            "tampered": ModelVersionSpec(
                architecture="embedding-demo", weights=str(DEMO_WEIGHTS), sha256="0" * 64
            )
        }
    )
    with pytest.raises(ConfigError, match="sha256"):
        load_model("tampered", cfg, device="cpu")
