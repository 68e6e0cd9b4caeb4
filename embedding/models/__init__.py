"""Model versions: the registry (what exists, where its weights are) and loading (open_clip)."""

from embedding.models.loading import LoadedModel, WeightsUnavailable, check_available, load_model
from embedding.models.registry import BUILTIN_VERSIONS, all_versions, get_version, locate_weights

__all__ = [
    "BUILTIN_VERSIONS",
    "LoadedModel",
    "WeightsUnavailable",
    "all_versions",
    "check_available",
    "get_version",
    "load_model",
    "locate_weights",
]
