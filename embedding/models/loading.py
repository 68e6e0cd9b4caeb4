"""Loading a model version with open_clip: the model, its preprocessing settings and its tokenizer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from embedding.cache import file_sha256
from embedding.config import ModelConfig, ModelVersionSpec
from embedding.errors import ConfigError
from embedding.images import Preprocess
from embedding.models.registry import get_version, locate_weights, register_architectures


class WeightsUnavailable(ConfigError):
    """A version's weights or tokenizer files are not on this machine."""


@dataclass
class LoadedModel:
    name: str
    spec: ModelVersionSpec
    model: torch.nn.Module
    preprocess: Preprocess
    tokenizer: Callable[[list[str]], torch.Tensor]
    weights_path: str | None
    weights_sha256: str | None
    device: torch.device
    dtype: torch.dtype


def expected_sha256(spec: ModelVersionSpec, weights_path: str | None) -> str | None:
    """The checksum a version's weights must have: from the spec, or from the `.json` shipped beside them."""
    if spec.sha256:
        return spec.sha256.lower()
    if weights_path:
        sidecar = Path(weights_path).with_suffix(".json")
        if sidecar.is_file():
            return json.loads(sidecar.read_text()).get("sha256")
    return None


def preprocess_for(spec: ModelVersionSpec, model: torch.nn.Module | None = None) -> Preprocess:
    """Preprocessing of a version: open_clip's settings for its tag or model, then the spec's overrides."""
    base = open_clip.get_pretrained_cfg(spec.architecture, spec.weights or "") if spec.weights else {}
    size = spec.image_size
    if size is None and model is not None:
        image_size = getattr(getattr(model, "visual", None), "image_size", None)
        size = image_size[0] if isinstance(image_size, tuple | list) else image_size
    if size is None:
        cfg = open_clip.get_model_config(spec.architecture) or {}
        size = cfg.get("vision_cfg", {}).get("image_size", 224)
    defaults = Preprocess()
    side = int(size if isinstance(size, int) else size[0])
    return Preprocess(
        size=(side, side),
        interpolation=spec.interpolation or base.get("interpolation") or defaults.interpolation,
        resize_mode=spec.resize_mode or base.get("resize_mode") or defaults.resize_mode,
        mean=tuple(spec.mean or base.get("mean") or defaults.mean),
        std=tuple(spec.std or base.get("std") or defaults.std),
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("inference.device is 'cuda' but no CUDA device is visible to this process")
    return torch.device(device)


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_available(name: str, config: ModelConfig | None = None) -> ModelVersionSpec:
    """Raise WeightsUnavailable (one clear sentence) unless the version can be loaded here."""
    register_architectures()
    spec = get_version(name, config)
    location = locate_weights(name, spec)
    if not location.available:
        raise WeightsUnavailable(location.problem)
    return spec


def load_model(
    name: str,
    config: ModelConfig | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> LoadedModel:
    """Load a model version for inference; fails at once when its files are not on this machine."""
    spec = check_available(name, config)
    location = locate_weights(name, spec)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu" and precision == "fp16":
        precision = "fp32"  # fp16 matmuls are slow or missing on CPUs; bf16 is the CPU option
    sha = None
    if location.path:
        sha = file_sha256(location.path)
        expected = expected_sha256(spec, location.path)
        if expected and expected != sha:
            raise ConfigError(
                f"weights of model version '{name}' at {location.path} have sha256 {sha}, "
                f"expected {expected}; "
                "the file is corrupt or not the one this version names"
            )
    # Never reach for a hub at load time: every file was located above.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    model = open_clip.create_model(
        spec.architecture,
        pretrained=location.path,
        precision=precision,
        device=torch_device,
        force_quick_gelu=spec.quick_gelu,
        pretrained_text=False,
        weights_only=True,
    )
    model.eval().requires_grad_(False)
    tokenizer = _tokenizer(spec)
    return LoadedModel(
        name=name,
        spec=spec,
        model=model,
        preprocess=preprocess_for(spec, model),
        tokenizer=tokenizer,
        weights_path=location.path,
        weights_sha256=sha,
        device=torch_device,
        dtype=_input_dtype(model, _DTYPES[precision]),
    )


def _tokenizer(spec: ModelVersionSpec) -> Callable[[list[str]], torch.Tensor]:
    if spec.tokenizer and os.path.isdir(spec.tokenizer):
        text_cfg = (open_clip.get_model_config(spec.architecture) or {}).get("text_cfg", {})
        return open_clip.tokenizer.HFTokenizer(
            spec.tokenizer, context_length=text_cfg.get("context_length", 77)
        )
    return open_clip.get_tokenizer(spec.architecture)


def _input_dtype(model: torch.nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype image tensors must have: that of the first convolution (mixed precision keeps norms fp32)."""
    for module in model.visual.modules() if hasattr(model, "visual") else ():
        if isinstance(module, torch.nn.Conv2d):
            return module.weight.dtype
    return default
