"""Index build and search on synthetic vectors (no model): shards, compression, portability, corruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.api import Vector, search
from embedding.errors import ConfigError
from embedding.index.build import build_index
from embedding.index.filters import equalities
from embedding.index.search import Index, VersionMismatch
from embedding.index.store import index_dir
from embedding.index.where import parse_where
from tests.index.conftest import clustered, write_embeddings


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])


@pytest.mark.parametrize("shards", [1, 3, 8])
def test_sharded_exact_index_equals_brute_force(index_config, shards: int) -> None:
    cfg = index_config(shards=shards)
    vectors = clustered(600, 1024, seed=1)
    ids = write_embeddings(Path(cfg.output.root), vectors, units=10)
    manifest = build_index(cfg)
    assert manifest.kind == "flat" and len(manifest.shards) == shards and manifest.rows == 600
    index = Index.for_version(cfg.output.root, "demo")
    seen = [i for shard in index.shards for i in shard.meta.column("image_id").to_pylist()]
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))  # each id in exactly one shard
    queries = clustered(20, 1024, seed=2)
    for q in queries:
        found = [index.metadata(c)["image_id"] for c in index.nearest(q, 10)]
        assert found == [ids[i] for i in exact_top(vectors, q, 10)]
    assert manifest.self_check["recall_at_k"] == 1.0


def test_compressed_index_keeps_recall_by_reranking(index_config) -> None:
    cfg = index_config(
        factory="'OPQ16_64,IVF32,PQ16x4'", shards=2, rerank=100, nprobe=8, self_check_queries=100
    )
    vectors = clustered(4000, 1024, seed=3)
    write_embeddings(Path(cfg.output.root), vectors, units=8)
    manifest = build_index(cfg)
    assert manifest.kind == "custom" and manifest.factory == "OPQ16_64,IVF32,PQ16x4"
    assert manifest.self_check["recall_at_k"] >= 0.95
    on_disk = json.loads((Path(index_dir(cfg.output.root, "demo")) / "index.json").read_text())
    assert on_disk["self_check"]["recall_at_k"] == manifest.self_check["recall_at_k"]
    index = Index.for_version(cfg.output.root, "demo")
    queries = clustered(50, 1024, seed=4)
    recall = np.mean(
        [
            len(
                {index.metadata(c)["image_id"] for c in index.nearest(q, 10)}
                & {f"img-{i:05d}" for i in exact_top(vectors, q, 10)}
            )
            / 10
            for q in queries
        ]
    )
    assert recall >= 0.95


def test_same_results_for_1_3_and_8_compressed_shards(index_config, tmp_path: Path) -> None:
    vectors = clustered(3000, 1024, seed=5)
    results = []
    for shards in (1, 3, 8):
        cfg = index_config(
            factory="'IVF16,PQ32x4'", shards=shards, rerank=200, nprobe=16, self_check_queries=0
        )
        root = Path(cfg.output.root)
        shutil.rmtree(root, ignore_errors=True)
        write_embeddings(root, vectors, units=8)
        build_index(cfg)
        index = Index.for_version(cfg.output.root, "demo")
        results.append(
            [
                [index.metadata(c)["image_id"] for c in index.nearest(q, 10)]
                for q in clustered(10, 1024, seed=6)
            ]
        )
    assert results[0] == results[1] == results[2]


def test_filters_apply_before_the_cut(index_config) -> None:
    cfg = index_config(shards=3)
    vectors = clustered(300, 1024, seed=7)
    write_embeddings(Path(cfg.output.root), vectors, units=6)
    build_index(cfg)
    index = Index.for_version(cfg.output.root, "demo")
    found = index.nearest(vectors[1], 10, equalities({"tags": "even"}))
    assert len(found) == 10 and all("even" in index.metadata(c)["tags"] for c in found)
    expected = [i for i in exact_top(vectors, vectors[1], 300) if i % 2 == 0][:10]
    assert [index.metadata(c)["image_id"] for c in found] == [f"img-{i:05d}" for i in expected]
    only = index.nearest(vectors[0], 10, parse_where("caption = 'caption img-00004'"))
    assert [index.metadata(c)["image_id"] for c in only] == ["img-00004"]
    with pytest.raises(ConfigError, match="filter on 'colour': no such column"):
        index.nearest(vectors[0], 5, equalities({"colour": "red"}))


def test_a_vector_of_another_version_is_refused(index_config) -> None:
    cfg = index_config()
    write_embeddings(Path(cfg.output.root), clustered(50, 1024, seed=8), units=2)
    build_index(cfg)
    with pytest.raises(VersionMismatch, match=r"'rn50-openai'.*'demo'"):
        search(Vector(np.ones(1024, np.float32) / 32, "rn50-openai"), cfg)


def test_one_index_over_two_versions_is_refused(index_config) -> None:
    cfg = index_config()
    root = Path(cfg.output.root)
    write_embeddings(root, clustered(40, 1024, seed=9), units=2)
    # A file of another version copied into this version's partition.
    other = root / "other"
    write_embeddings(other, clustered(10, 1024, seed=10), version="2022-04-11", units=1)
    src = next((other / "embeddings" / "model_version=2022-04-11").glob("*.parquet"))
    shutil.copy(src, root / "embeddings" / "model_version=demo" / "part-unit00001.parquet")
    with pytest.raises(ConfigError, match=r"two model versions.*'2022-04-11'.*'demo'"):
        build_index(cfg)


def test_index_folder_is_portable_and_checked(index_config, tmp_path: Path) -> None:
    cfg = index_config(shards=2)
    vectors = clustered(200, 1024, seed=11)
    write_embeddings(Path(cfg.output.root), vectors, units=4)
    build_index(cfg)
    moved = tmp_path / "elsewhere" / "index"
    shutil.copytree(index_dir(cfg.output.root, "demo"), moved)
    shutil.rmtree(Path(cfg.output.root))  # nothing of the original output remains
    index = Index.open(str(moved), verify=True)
    assert index.metadata(index.nearest(vectors[3], 1)[0])["image_id"] == "img-00003"
    manifest = json.loads((moved / "index.json").read_text())
    shard_file = moved / manifest["shards"][0]["files"]["vectors"]
    data = bytearray(shard_file.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed: caught by --verify
    shard_file.write_bytes(bytes(data))
    Index.open(str(moved))  # sizes match: loading stays cheap
    with pytest.raises(ConfigError, match="does not match its SHA-256"):
        Index.open(str(moved), verify=True)
    shard_file.write_bytes(bytes(data[:-100]))  # truncated: refused on load
    with pytest.raises(ConfigError, match="corrupt"):
        Index.open(str(moved))


def test_rebuild_replaces_the_index_in_place(index_config) -> None:
    cfg = index_config(shards=2)
    root = Path(cfg.output.root)
    write_embeddings(root, clustered(100, 1024, seed=12), units=2)
    first = build_index(cfg)
    assert build_index(cfg).build_id == first.build_id  # nothing new: no rebuild
    second = build_index(cfg, force=True)
    folder = Path(index_dir(cfg.output.root, "demo"))
    assert second.build_id != first.build_id
    assert sorted(p.name for p in folder.iterdir()) == sorted(["index.json", f"build-{second.build_id}"])
    table = pq.read_table(folder / second.shards[0].files["meta"])
    assert {"image_id", "uri", "caption", "tags"} <= set(table.column_names)
    assert table.schema.field("tags").type == pa.list_(pa.string())
