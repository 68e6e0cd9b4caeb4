"""The self-check of an index: recall@k against exact search over its own stored vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from embedding.index.search import Index
from embedding.index.store import IndexManifest, local_folder


def exact_kth_scores(index: Index, queries: np.ndarray, k: int) -> np.ndarray:
    """The k-th best exact score per query over every stored vector (brute force, in chunks)."""
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for shard in index.shards:
        live = shard.live_mask()
        for start in range(0, len(shard.vectors), 65_536):
            block = np.asarray(shard.vectors[start : start + 65_536], dtype=np.float32)
            block_scores = queries @ block.T
            block_scores[:, ~live[start : start + 65_536]] = -np.inf  # retired rows are not answers
            scores = np.concatenate([best, block_scores], axis=1)
            best = -np.sort(-scores, axis=1)[:, :k]
    return best[:, -1]


def _recall(index: Index, queries: np.ndarray, k: int) -> float:
    """Recall@k of the index's search against exact search, for these queries.

    A result counts as a true neighbour when its exact score reaches the k-th exact score (ties included).
    """
    kth = exact_kth_scores(index, queries, k)
    hits = []
    for query, threshold in zip(queries, kth, strict=True):
        # Score the results from the same stored vectors as the truth, so both sides round alike.
        found = index.nearest(query, k)
        scores = [float(np.asarray(index.shards[c.shard].vectors[c.row], np.float32) @ query) for c in found]
        hits.append(sum(score >= threshold - 1e-6 for score in scores) / k)
    return round(float(np.mean(hits)), 4)


def _sample_rows(index: Index, shards: list[int], n: int, seed: int) -> np.ndarray:
    """Up to n stored vectors of live rows of these shards, drawn at random (seeded)."""
    live = [np.flatnonzero(index.shards[s].live_mask()) for s in shards]
    if not sum(len(rows) for rows in live):
        return np.empty((0, index.manifest.dim), np.float32)
    which = np.concatenate([np.full(len(rows), s) for s, rows in zip(shards, live, strict=True)])
    rows = np.concatenate(live).astype(np.int64)
    picks = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return np.stack([np.asarray(index.shards[int(which[i])].vectors[rows[i]], np.float32) for i in picks])


def self_check(
    folder: str,
    manifest: IndexManifest,
    storage_options: dict,
    queries: int,
    k: int = 10,
    texts: np.ndarray | None = None,
) -> dict:
    """Recall@k of an index against exact search: on a seeded sample of its own live vectors as queries
    (half of them from the shards an update added, when it added some), and on text queries (`texts`, unit
    vectors of the version's text tower), since compressed kinds can fail text queries that look nothing
    like the images they were trained on while image queries look fine."""
    if queries == 0:
        return {"queries": 0}
    index = Index.load(local_folder(folder, manifest, storage_options), manifest)
    every = list(range(len(index.shards)))
    new = [n for n, shard in enumerate(manifest.shards) if shard.delta]
    parts = [_sample_rows(index, new, queries // 2, seed=1)] if new else []
    parts.append(_sample_rows(index, every, queries - sum(len(p) for p in parts), seed=0))
    sample = np.concatenate(parts)
    found: dict[str, Any] = {"queries": len(sample), "k": k, "recall_at_k": _recall(index, sample, k)}
    if new:
        found["new_rows_queries"] = len(parts[0])
    if texts is not None and len(texts):
        found["text_queries"] = len(texts)
        found["text_recall_at_k"] = _recall(index, np.asarray(texts, np.float32), k)
    return found


def lowest_recall(check: dict) -> float | None:
    """The worst recall a self-check measured (image or text queries), or None without queries."""
    values = [check[key] for key in ("recall_at_k", "text_recall_at_k") if key in check]
    return min(values) if values else None
