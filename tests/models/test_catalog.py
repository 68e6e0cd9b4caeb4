"""What the start-time checks know of open_clip's architectures and tags, read without importing torch."""

from __future__ import annotations

import subprocess
import sys

import open_clip
import pytest

from embedding.models.catalog import model_config, preprocess_for
from embedding.models.registry import BUILTIN_VERSIONS, register_architectures

ARCHITECTURES = [
    "ViT-H-14",
    "RN50",
    "xlm-roberta-large-ViT-H-14",
    "ViT-S-32",
    "ViT-B-16-SigLIP",
    "embedding-demo",
]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_model_configs_are_open_clips(architecture: str) -> None:
    register_architectures()
    assert model_config(architecture) == open_clip.get_model_config(architecture)


def test_unknown_and_hub_architectures_have_no_config() -> None:
    assert model_config("no-such-architecture") is None
    assert model_config("hf-hub:org/model") is None


@pytest.mark.parametrize("version", sorted(BUILTIN_VERSIONS))
def test_preprocessing_follows_open_clip(version: str) -> None:
    spec = BUILTIN_VERSIONS[version]
    register_architectures()
    prep = preprocess_for(spec)
    tagged = open_clip.get_pretrained_cfg(spec.architecture, spec.weights or "") or {}
    image_size = open_clip.get_model_config(spec.architecture)["vision_cfg"]["image_size"]
    assert prep.size == (image_size, image_size)
    assert prep.mean == tuple(tagged.get("mean") or open_clip.OPENAI_DATASET_MEAN)
    assert prep.std == tuple(tagged.get("std") or open_clip.OPENAI_DATASET_STD)


def test_the_driver_checks_a_run_without_importing_torch_or_ray() -> None:
    code = (
        "import sys\n"
        "from embedding.config import Config\n"
        "from embedding.models.identity import check_width, identity_for\n"
        "from embedding.job.checks import prepare\n"
        "from embedding.models.registry import check_available\n"
        "cfg = Config()\n"
        "check_width('demo', check_available('demo', cfg.model))\n"
        "identity_for(cfg)\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
