"""The demo model's training entry point: a smoke run writes weights that open_clip loads."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest

from embedding.demo import quality
from embedding.models.registry import DEMO_ARCHITECTURE, register_architectures

# The smoke run trains in a subprocess (jobs/train_demo_model.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_weights_that_load_into_the_registered_architecture(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train_demo_model.py"), "--steps", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    weights = out / "demo.safetensors"
    meta = json.loads((out / "demo.json").read_text())
    assert meta["architecture"] == DEMO_ARCHITECTURE
    assert meta["steps"] == 3
    assert meta["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.stat().st_size <= 20 * 1024 * 1024

    register_architectures()
    model = open_clip.create_model(DEMO_ARCHITECTURE, pretrained=str(weights))
    tokenizer = open_clip.get_tokenizer(DEMO_ARCHITECTURE)
    prep = quality.model_preprocess(model)
    encode_images, encode_texts = quality.model_encoders(model, tokenizer, prep)
    gallery = quality.make_gallery(prep, seed=5, per_class=1)

    images = encode_images(gallery.pixels[:4])
    texts = encode_texts(["a red circle", "un cercle rouge", "un círculo rojo", "ein roter Kreis"])
    for vectors in (images, texts):
        assert vectors.shape == (4, 1024)
        assert np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_training_refuses_the_evaluation_seed(tmp_path: Path) -> None:
    from embedding.demo.train import TrainConfig, train

    with pytest.raises(ValueError, match="reserved"):
        train(TrainConfig(out=tmp_path, seed=quality.EVAL_SEED, steps=1))
    assert not (tmp_path / "demo.safetensors").exists()
