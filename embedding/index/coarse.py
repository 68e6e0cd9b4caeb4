"""The coarse step of IVF shards that share one trained structure, done once per query.

Every shard of a build, and every delta shard an update adds, is filled from the build's trained index
(`trained.faiss`): the same OPQ rotation and the same coarse centroids. Searching each shard on its own
repeats both for every shard, and the coarse search (all `nlist` centroids) costs more than scanning the
few short lists a shard holds behind them: an updated index with two delta shards answered 0.74x the
queries per second of a fresh build. Here the rotation and the centroids nearest to the query are
computed once and each shard scans its own lists for them (FAISS's `search_preassigned`), with its own
selector; the answers are those of searching each shard on its own, bit for bit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import faiss
import numpy as np
from faiss import swig_ptr


@dataclass(frozen=True)
class Assigned:
    """A query rotated by the shared transforms, and its nearest coarse centroids."""

    query: np.ndarray  # (1, d) float32, in the inverted lists' space
    centroids: np.ndarray  # (1, nprobe) int64
    scores: np.ndarray  # (1, nprobe) float32


@dataclass(frozen=True)
class SharedCoarse:
    """The transforms and coarse quantizer shared by a list of IVF shards."""

    transforms: list[faiss.VectorTransform]
    quantizer: faiss.Index
    ivfs: list[faiss.IndexIVF]
    owners: list[faiss.Index]  # the shards' indexes, which own the objects above

    @classmethod
    def of(cls, indexes: list[faiss.Index]) -> SharedCoarse | None:
        """The shared structure of these indexes, or None unless every one is an IVF index with the same
        transforms and the same flat coarse quantizer (byte for byte)."""
        parts = [_parts(index) for index in indexes]
        if not parts or any(part is None for part in parts):
            return None
        first = parts[0]
        assert first is not None
        key = _key(*first)
        if key is None or any(_key(*part) != key for part in parts[1:] if part is not None):
            return None
        return cls(first[0], first[1].quantizer, [part[1] for part in parts if part is not None], indexes)

    def assign(self, query: np.ndarray, nprobe: int) -> Assigned:
        """Rotate one query (shape (1, dim)) and find its `nprobe` nearest coarse centroids."""
        rotated = query
        for transform in self.transforms:
            rotated = transform.apply(rotated)
        nprobe = min(nprobe, self.ivfs[0].nlist)
        scores, centroids = self.quantizer.search(np.ascontiguousarray(rotated, np.float32), nprobe)
        return Assigned(np.ascontiguousarray(rotated, np.float32), centroids, scores)

    def search(
        self, shard: int, assigned: Assigned, k: int, selector: faiss.IDSelector | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows of one shard for an assigned query: (scores, rows), each of shape (1, k)."""
        params = faiss.SearchParametersIVF()
        params.nprobe = assigned.centroids.shape[1]
        if selector is not None:
            params.sel = selector
        scores = np.empty((1, k), np.float32)
        rows = np.empty((1, k), np.int64)
        # The Python wrapper of search_preassigned refuses search parameters (the selector); the C++ call
        # it wraps takes them (faiss's stubs omit it).
        self.ivfs[shard].search_preassigned_c(  # type: ignore[attr-defined]
            1,
            swig_ptr(assigned.query),
            k,
            swig_ptr(assigned.centroids),
            swig_ptr(assigned.scores),
            swig_ptr(scores),
            swig_ptr(rows),
            False,
            params,
        )
        return scores, rows


def _parts(index: faiss.Index) -> tuple[list[faiss.VectorTransform], faiss.IndexIVF] | None:
    """The transforms and the IVF index inside `index`, or None for other kinds."""
    transforms = []
    if isinstance(index, faiss.IndexPreTransform):
        chain = index.chain  # a SWIG vector, which faiss's stubs call a list
        transforms = [chain.at(i) for i in range(chain.size())]  # type: ignore[attr-defined]
        index = faiss.downcast_index(index.index)
    if not isinstance(index, faiss.IndexIVF):
        return None
    return transforms, index


def _key(transforms: list[faiss.VectorTransform], ivf: faiss.IndexIVF) -> str | None:
    """A digest of what must be equal for two IVF indexes to share their coarse step: the metric, the
    transforms' matrices and the coarse centroids; None when those are not plain arrays."""
    quantizer = faiss.downcast_index(ivf.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat):
        return None
    digest = hashlib.sha256(f"{ivf.metric_type} {ivf.nlist} {ivf.d} {len(transforms)}".encode())
    for transform in transforms:
        linear = faiss.downcast_VectorTransform(transform)
        if not isinstance(linear, faiss.LinearTransform):
            return None
        digest.update(faiss.vector_to_array(linear.A).tobytes())
        digest.update(faiss.vector_to_array(linear.b).tobytes())
    digest.update(faiss.vector_to_array(quantizer.codes).tobytes())
    return digest.hexdigest()
