"""The coarse step shared by IVF shards gives the answers of searching each shard on its own."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from embedding.index.build import build_index
from embedding.index.coarse import SharedCoarse
from embedding.index.search import Index
from embedding.index.where import parse_where
from embedding.store.partition import Partition
from tests.index.conftest import clustered, write_embeddings

DIM = 1024


def test_shards_of_one_structure_share_the_coarse_step_and_answer_alike(local_index_config) -> None:
    cfg = local_index_config(shards=2, compact_at=10, self_check_queries=0, factory="'OPQ16_64,IVF16,PQ16x4'")
    root = Path(cfg.output.root)
    write_embeddings(root, clustered(1200, DIM, seed=1), units=4)
    build_index(cfg)
    write_embeddings(root, clustered(150, DIM, seed=2), units=1, first=5000)  # a delta shard
    Partition(cfg.output.root, "image", "demo").retire(["unit00002"])  # tombstones
    assert build_index(cfg).change.action == "update"

    shared = Index.for_version(cfg.output.root, "demo")
    assert shared.coarse is not None and len(shared.shards) == 3
    alone = Index(shared.manifest, shared.shards)  # each shard searched on its own
    assert alone.coarse is None
    for query in clustered(30, DIM, seed=3):
        for where in (None, "tags = even", "tags = no-such-tag"):
            what = parse_where(where) if where else None
            found = [(c.shard, c.row, round(c.cosine, 5)) for c in shared.nearest(query, 10, what)]
            assert found == [(c.shard, c.row, round(c.cosine, 5)) for c in alone.nearest(query, 10, what)]
            assert where == "tags = no-such-tag" or len(found) == 10
            retired = shared.shards[0].retired
            assert not any(shard == 0 and row in retired for shard, row, _ in found)


def _trained(factory: str, seed: int) -> faiss.Index:
    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(np.random.default_rng(seed).normal(size=(2000, 32)).astype(np.float32))
    return index


def test_indexes_that_do_not_share_a_structure_are_searched_each_on_its_own() -> None:
    one = _trained("IVF8,PQ4x4", seed=0)
    assert SharedCoarse.of([one, faiss.clone_index(one)]) is not None
    assert SharedCoarse.of([one, _trained("IVF8,PQ4x4", seed=1)]) is None  # other centroids
    assert SharedCoarse.of([_trained("OPQ4_16,IVF8,PQ4x4", 0), _trained("OPQ4_16,IVF8,PQ4x4", 1)]) is None
    assert SharedCoarse.of([one, faiss.IndexFlatIP(32)]) is None  # not IVF
    assert SharedCoarse.of([_trained("HNSW32,SQ8", seed=0)]) is None
    assert SharedCoarse.of([]) is None
