"""The sharded FAISS index of one model version: choosing its kind, building it, loading and searching it."""

from embedding.index.build import build_index
from embedding.index.search import Index, VersionMismatch

__all__ = ["Index", "VersionMismatch", "build_index"]
