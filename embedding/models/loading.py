"""Loading a model version with open_clip: the model, its preprocessing settings and its tokenizer."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import open_clip
import torch

from embedding.config import ModelConfig, ModelVersionSpec
from embedding.errors import ConfigError
from embedding.media.resize import Preprocess
from embedding.models.catalog import model_config, preprocess_for
from embedding.models.registry import check_available, expected_sha256, locate_weights, register_architectures
from embedding.store.cache import file_sha256


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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("inference.device is 'cuda' but no CUDA device is visible to this process")
    return torch.device(device)


_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_random_init() -> Iterator[None]:
    """Skip torch.nn.init while a model whose weights file is loaded next is built: open_clip loads the file
    strictly (every parameter must be in it), so the random values would all be overwritten, and drawing
    them costs about 1 s for ViT-S-32 and tens of seconds for ViT-H-14 on a CPU."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    with _INIT_LOCK:
        saved = {n: getattr(torch.nn.init, n) for n in names}
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        try:
            yield
        finally:
            for name, fn in saved.items():
                setattr(torch.nn.init, name, fn)


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_model(
    name: str,
    config: ModelConfig | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> LoadedModel:
    """Load a model version for inference; fails at once when its files are not on this machine."""
    spec = check_available(name, config)
    register_architectures()
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
    with _no_random_init() if location.path else contextlib.nullcontext():
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
        text_cfg = (model_config(spec.architecture) or {}).get("text_cfg", {})
        return open_clip.tokenizer.HFTokenizer(
            spec.tokenizer, context_length=text_cfg.get("context_length", 77)
        )
    return open_clip.get_tokenizer(spec.architecture)


def _input_dtype(model: torch.nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype image tensors must have: that of the first convolution (mixed precision keeps norms fp32)."""
    visual = getattr(model, "visual", None)
    for module in visual.modules() if isinstance(visual, torch.nn.Module) else ():
        if isinstance(module, torch.nn.Conv2d):
            return module.weight.dtype
    return default
