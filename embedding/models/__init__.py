"""Model versions: the registry (what exists, where its weights are), what open_clip knows of them (catalog,
read without importing torch) and loading (open_clip and torch, imported only when a model is loaded)."""

from typing import Any

from embedding.models.catalog import preprocess_for
from embedding.models.registry import (
    BUILTIN_VERSIONS,
    WeightsUnavailable,
    all_versions,
    check_available,
    get_version,
    locate_weights,
)

__all__ = [
    "BUILTIN_VERSIONS",
    "LoadedModel",
    "WeightsUnavailable",
    "all_versions",
    "check_available",
    "get_version",
    "load_model",
    "locate_weights",
    "preprocess_for",
]


def __getattr__(name: str) -> Any:
    """`load_model` and `LoadedModel` import torch: only when asked for."""
    if name in ("load_model", "LoadedModel"):
        from embedding.models import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'embedding.models' has no attribute {name!r}")
