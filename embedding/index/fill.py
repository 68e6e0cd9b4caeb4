"""Filling shards: a copy of the trained, empty index gets the vectors of whole embedding files.

A build, a compaction and an update all fill shards the same way; they differ in which files go in and
whether the trained structure is new. Each shard records which unit each of its rows came from (`spans`),
so that a later update can retire a unit's rows without reading the shard.

Small fills run in this process: starting Ray for a collection of a few thousand rows costs more than
the fill (`index.local_rows`). Larger ones run as Ray tasks, one shard each.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedding.config import Config
from embedding.index.store import ShardFiles, Span, sha256_file
from embedding.store.files import filesystem

FIXED = {"image_id", "embedding", "model_version", "width", "height", "content_sha256"}


def read_vectors(table: pa.Table) -> np.ndarray:
    """The embedding column as a float32 (N, D) array."""
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def unit_of(path: str) -> str:
    """The unit id of a committed part file (`.../part-<unit>.parquet`)."""
    return posixpath.basename(path).removeprefix("part-").removesuffix(".parquet")


def indexed_rows(table: pa.Table) -> pa.Table:
    """Rows of an embeddings or a video frames file, alike: a frame is held under its video's id, with its
    time and index (null for images), so one search ranks frames beside images."""
    if "video_id" in table.column_names:
        return table.rename_columns(["image_id" if n == "video_id" else n for n in table.column_names])
    n = table.num_rows
    return table.append_column("frame_time_s", pa.nulls(n, pa.float64())).append_column(
        "frame_index", pa.nulls(n, pa.int32())
    )


def split_files(files: list[str], rows: list[int], shards: int) -> list[list[str]]:
    """Assign whole files to shards, balancing row counts (largest first, deterministic)."""
    groups: list[list[str]] = [[] for _ in range(shards)]
    load = [0] * shards
    for path, n in sorted(zip(files, rows, strict=True), key=lambda item: (-item[1], item[0])):
        target = load.index(min(load))
        groups[target].append(path)
        load[target] += n
    return [sorted(g) for g in groups if g]


@dataclass(frozen=True)
class FillTarget:
    """Where and how the shards of one build folder are written (the same for each of its shards)."""

    root: str  # the output root the embedding files are under
    storage_options: dict
    index_folder: str
    build_folder: str  # relative to index_folder: build-<id>
    rerank_dtype: str
    delta: bool  # shards of an update


def fill_shard(trained: bytes, files: list[str], number: int, target: FillTarget) -> ShardFiles:
    """Add one shard's vectors to a copy of the trained index and write its three files."""
    fs, _ = filesystem(target.root, target.storage_options)
    tables = [indexed_rows(pq.read_table(p, filesystem=fs)) for p in files]
    spans, start = [], 0
    for path, part in zip(files, tables, strict=True):
        spans.append(Span(unit=unit_of(path), start=start, rows=part.num_rows))
        start += part.num_rows
    table = pa.concat_tables(tables, promote_options="default")
    vectors = read_vectors(table)
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    index.add(vectors)
    meta = table.drop_columns([c for c in table.column_names if c in FIXED - {"image_id"}])
    names = {
        role: f"shard-{number:03d}.{ext}"
        for role, ext in (("index", "faiss"), ("vectors", "vectors.npy"), ("meta", "meta.parquet"))
    }
    with tempfile.TemporaryDirectory() as tmp:
        local = {role: os.path.join(tmp, name) for role, name in names.items()}
        faiss.write_index(index, local["index"])
        np.save(
            local["vectors"], vectors.astype(np.float16 if target.rerank_dtype == "float16" else np.float32)
        )
        pq.write_table(meta, local["meta"])
        written = _put(local, target)
    return ShardFiles(rows=len(vectors), spans=spans, delta=target.delta, **written)


def write_trained(trained: bytes, target: FillTarget) -> ShardFiles:
    """The trained, empty index beside the shards: what later updates fill their delta shards from."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trained.faiss")
        with open(path, "wb") as f:
            f.write(trained)
        return ShardFiles(rows=0, **_put({"index": path}, target))


def _put(local: dict[str, str], target: FillTarget) -> dict:
    """Copy local files into the build folder: their relative paths, sizes and SHA-256."""
    out_fs, out_base = filesystem(target.index_folder, target.storage_options)
    out_fs.makedirs(posixpath.join(out_base, target.build_folder), exist_ok=True)
    files = {role: posixpath.join(target.build_folder, os.path.basename(p)) for role, p in local.items()}
    for role, path in local.items():
        out_fs.put(path, posixpath.join(out_base, files[role]))
    return {
        "files": files,
        "bytes": {role: os.path.getsize(p) for role, p in local.items()},
        "sha256": {role: sha256_file(p) for role, p in local.items()},
    }


def fill_shards(
    cfg: Config, trained: bytes, groups: list[list[str]], rows: int, target: FillTarget
) -> list[ShardFiles]:
    """One shard per group of files: in this process for small fills, else as Ray tasks."""
    if rows <= cfg.index.local_rows:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        return [fill_shard(trained, group, n, target) for n, group in enumerate(groups)]
    import ray

    from embedding.cluster import connect_ray

    connect_ray(cfg.ray)

    def remote_fill(blob: bytes, group: list[str], n: int) -> ShardFiles:
        faiss.omp_set_num_threads(1)  # one core per task: the tasks are the parallelism
        return fill_shard(blob, group, n, target)

    task = ray.remote(num_cpus=1)(remote_fill)
    blob = ray.put(trained)
    return ray.get([task.remote(blob, group, n) for n, group in enumerate(groups)])
