"""Choosing the FAISS index kind from the collection's size and the memory budget.

The rules (all kinds use inner product over unit vectors, i.e. cosine similarity):

1. **flat** (`Flat`): exact search, when the collection has at most `index.exact_max_rows` rows and its
   float32 vectors fit the memory budget.
2. **hnsw** (`HNSW32,SQ8`): a graph over 8-bit scalar-quantised vectors, when that fits the budget
   (about D + 264 bytes per vector) and the collection has at most 5 million rows.
3. **ivfpq** (`OPQ{M}_{4M},IVF{nlist},PQ{M}`): compressed inverted lists otherwise; M (bytes per vector)
   is the largest of 128, 64, 32, 16 that fits the budget, and nlist is about 4 * sqrt(rows), a power
   of two between 64 and 65,536.

Every kind but flat re-ranks its best `index.rerank` candidates exactly from the stored vectors (memory-
mapped float16 on disk), so compression costs little recall. `index.factory` overrides the rules with any
FAISS factory string; `index.kind` forces one of the three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss

from embedding.config import IndexConfig

HNSW_MAX_ROWS = 5_000_000
_IDS_BYTES = 8  # FAISS stores one int64 id per vector in inverted lists


@dataclass(frozen=True)
class IndexKind:
    kind: str  # flat | hnsw | ivfpq | custom
    factory: str

    @property
    def exact(self) -> bool:
        return self.factory.strip() == "Flat"

    @property
    def needs_training(self) -> bool:
        return not self.exact


def _nlist(rows: int) -> int:
    target = 4 * math.sqrt(max(rows, 1))
    return int(min(65_536, max(64, 2 ** round(math.log2(target)))))


def _pq_bytes(dim: int, rows: int, budget: int) -> int:
    for m in (128, 64, 32, 16):
        if dim % m == 0 and rows * (m + _IDS_BYTES) <= budget:
            return m
    return next((m for m in (16, 8, 4) if dim % m == 0), 1)


def choose(rows: int, dim: int, cfg: IndexConfig) -> IndexKind:
    """The index kind for `rows` vectors of `dim` dimensions (see the module docstring)."""
    if cfg.factory:
        return IndexKind("custom", cfg.factory)
    budget = cfg.memory_budget_mb * 1024 * 1024
    kind = cfg.kind
    if kind == "auto":
        if rows <= cfg.exact_max_rows and rows * dim * 4 <= budget:
            kind = "flat"
        elif rows <= HNSW_MAX_ROWS and rows * (dim + 2 * 32 * 4 + _IDS_BYTES) <= budget:
            kind = "hnsw"
        else:
            kind = "ivfpq"
    if kind == "flat":
        return IndexKind("flat", "Flat")
    if kind == "hnsw":
        return IndexKind("hnsw", "HNSW32,SQ8")
    m = _pq_bytes(dim, rows, budget)
    return IndexKind("ivfpq", f"OPQ{m}_{min(dim, 4 * m)},IVF{_nlist(rows)},PQ{m}")


def create(kind: IndexKind, dim: int) -> faiss.Index:
    return faiss.index_factory(dim, kind.factory, faiss.METRIC_INNER_PRODUCT)


def inverted_lists(index: faiss.Index) -> int | None:
    """How many inverted lists an IVF index (behind its transforms) has; None for other kinds."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    return int(inner.nlist) if isinstance(inner, faiss.IndexIVF) else None


def search_parameters(
    index: faiss.Index, nprobe: int, ef_search: int, selector: faiss.IDSelector | None = None
) -> faiss.SearchParameters | None:
    """FAISS search parameters for any kind, passed through a pre-transform (OPQ) to the inner index."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    params: faiss.SearchParameters
    if isinstance(inner, faiss.IndexIVF):
        ivf = faiss.SearchParametersIVF()  # what the keyword constructor does: construct, then set
        ivf.nprobe = nprobe
        params = ivf
    elif isinstance(inner, faiss.IndexHNSW):
        # faiss's stubs omit SearchParametersHNSW (and the keyword constructor of every SearchParameters).
        params = faiss.SearchParametersHNSW(efSearch=ef_search)  # type: ignore[attr-defined]
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
        _keep_alive(params, selector)
    if inner is not index:
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = params
        _keep_alive(outer, params)
        return outer
    return params


def _keep_alive(params: faiss.SearchParameters, referenced: object) -> None:
    """Hold `referenced` as long as `params` (SWIG keeps no reference of its own)."""
    # faiss's Python wrapper admits this attribute on every SearchParameters; its stubs omit it.
    params.referenced_objects = [referenced]  # type: ignore[attr-defined]
