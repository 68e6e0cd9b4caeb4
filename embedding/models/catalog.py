"""What open_clip knows of an architecture or a pretrained tag, read for the start-time checks without
importing open_clip, which imports torch (seconds, and hundreds of MB that a driver on Ray never uses).

Architectures are open_clip's JSON model configs, read as files: the project's own folder first (it is
registered last with open_clip, so it wins there too), then the `model_configs` folder of the open_clip
package. Pretrained tags are Python data inside open_clip: only a version named by a tag, not by a weights
file, imports open_clip to ask about it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from embedding.config import ModelVersionSpec
from embedding.media.resize import Preprocess

CONFIG_DIR = Path(__file__).parent / "configs"


@functools.cache
def _open_clip_configs() -> Path | None:
    spec = importlib.util.find_spec("open_clip")  # finds the package without running it
    return Path(spec.origin).parent / "model_configs" if spec and spec.origin else None


def model_config(architecture: str) -> dict[str, Any] | None:
    """open_clip's config of an architecture (embed_dim, vision_cfg, text_cfg), None for hf-hub: names."""
    if architecture.startswith("hf-hub:"):
        return None
    for folder in (CONFIG_DIR, _open_clip_configs()):
        path = folder / f"{architecture}.json" if folder else None
        if path is not None and path.is_file():
            return json.loads(path.read_text())
    return None


def pretrained_cfg(architecture: str, tag: str) -> dict[str, Any]:
    """open_clip's record of a pretrained tag (hf_hub, url, mean, std, ...), {} when it has none."""
    import open_clip

    return open_clip.get_pretrained_cfg(architecture, tag) or {}


def pretrained_tags(architecture: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(architecture))


def is_weights_file(weights: str | None) -> bool:
    """A version's `weights` names a file (not an open_clip pretrained tag)."""
    if not weights:
        return False
    return os.sep in weights or weights.endswith((".safetensors", ".bin", ".pt", ".pth"))


def preprocess_for(spec: ModelVersionSpec, model: Any = None) -> Preprocess:
    """Preprocessing of a version: open_clip's settings for its tag or model, then the spec's overrides
    (`model`, when loaded, gives the image size of architectures that have no config file)."""
    tag = spec.weights if spec.weights and not is_weights_file(spec.weights) else None
    base = pretrained_cfg(spec.architecture, tag) if tag else {}
    size = spec.image_size
    if size is None and model is not None:
        image_size = getattr(getattr(model, "visual", None), "image_size", None)
        size = image_size[0] if isinstance(image_size, tuple | list) else image_size
    if size is None:
        size = (model_config(spec.architecture) or {}).get("vision_cfg", {}).get("image_size", 224)
    defaults = Preprocess()
    side = int(size if isinstance(size, int) else size[0])
    return Preprocess(
        size=(side, side),
        interpolation=spec.interpolation or base.get("interpolation") or defaults.interpolation,
        resize_mode=spec.resize_mode or base.get("resize_mode") or defaults.resize_mode,
        mean=tuple(spec.mean or base.get("mean") or defaults.mean),
        std=tuple(spec.std or base.get("std") or defaults.std),
    )
