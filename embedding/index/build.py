"""Building the sharded index of one model version from its committed embeddings.

One index is trained once on a sample (quantizer, codebooks); its trained, empty copy is shipped to Ray
tasks that fill one shard each from their share of the embedding files. Each shard maps its rows back to
`image_id` (and the carried metadata), and keeps its vectors on disk for exact re-ranking.
"""

from __future__ import annotations

import logging
import os
import posixpath
import secrets
import tempfile
import time
from datetime import UTC, datetime

import faiss
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from embedding.cluster import connect_ray
from embedding.config import Config, IndexConfig
from embedding.errors import ConfigError
from embedding.index.kinds import IndexKind, choose, create
from embedding.index.store import (
    IndexManifest,
    ShardFiles,
    index_dir,
    read_manifest,
    sha256_file,
    write_manifest,
)
from embedding.models.identity import check_same, identity_for
from embedding.models.registry import get_version
from embedding.store.files import filesystem
from embedding.store.lease import Lease
from embedding.store.partition import FRAMES_TABLE, Partition

log = logging.getLogger(__name__)

FIXED = {"image_id", "embedding", "model_version", "width", "height", "content_sha256"}


def read_vectors(table: pa.Table) -> np.ndarray:
    """The embedding column as a float32 (N, D) array."""
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def _check_versions(partition: Partition, files: list[str]) -> None:
    """One vector space per index: every file must be of the partition's model version."""
    for path in files:
        meta = pq.read_schema(path, filesystem=partition.fs).metadata or {}
        found = meta.get(b"model_version", b"").decode()
        if found and found != partition.version:
            raise ConfigError(
                f"cannot build one index over two model versions: {partition.url(path)} holds vectors of "
                f"'{found}', the index is for '{partition.version}'"
            )


def _split_files(files: list[str], rows: list[int], shards: int) -> list[list[str]]:
    """Assign whole files to shards, balancing row counts (largest first, deterministic)."""
    groups: list[list[str]] = [[] for _ in range(shards)]
    load = [0] * shards
    for path, n in sorted(zip(files, rows, strict=True), key=lambda item: (-item[1], item[0])):
        target = load.index(min(load))
        groups[target].append(path)
        load[target] += n
    return [sorted(g) for g in groups if g]


def _train_sample(
    partition: Partition, files: list[str], rows: list[int], size: int, seed: int
) -> np.ndarray:
    """About `size` vectors drawn from whole files chosen at random (seeded)."""
    order = np.random.default_rng(seed).permutation(len(files))
    picked, total = [], 0
    for i in order:
        picked.append(files[i])
        total += rows[i]
        if total >= size:
            break
    tables = [pq.read_table(p, columns=["embedding"], filesystem=partition.fs) for p in picked]
    vectors = read_vectors(pa.concat_tables(tables))
    if len(vectors) > size:
        vectors = vectors[np.random.default_rng(seed).choice(len(vectors), size, replace=False)]
    return vectors


def _indexed_rows(table: pa.Table) -> pa.Table:
    """Rows of an embeddings or a video frames file, alike: a frame is held under its video's id, with its
    time and index (null for images), so one search ranks frames beside images."""
    if "video_id" in table.column_names:
        return table.rename_columns(["image_id" if n == "video_id" else n for n in table.column_names])
    n = table.num_rows
    return table.append_column("frame_time_s", pa.nulls(n, pa.float64())).append_column(
        "frame_index", pa.nulls(n, pa.int32())
    )


def fill_shard(
    trained: npt.NDArray[np.uint8],
    files: list[str],
    number: int,
    root: str,
    storage_options: dict,
    build_folder: str,
    index_folder: str,
    cfg: IndexConfig,
    threads: int,
) -> ShardFiles:
    """Add one shard's vectors to a copy of the trained index and write its three files."""
    faiss.omp_set_num_threads(threads)
    fs, _ = filesystem(root, storage_options)
    table = pa.concat_tables(
        [_indexed_rows(pq.read_table(p, filesystem=fs)) for p in files], promote_options="default"
    )
    vectors = read_vectors(table)
    index = faiss.deserialize_index(trained)
    index.add(vectors)
    meta = table.drop_columns([c for c in table.column_names if c in FIXED - {"image_id"}])
    names = {
        role: f"shard-{number:03d}.{ext}"
        for role, ext in (("index", "faiss"), ("vectors", "vectors.npy"), ("meta", "meta.parquet"))
    }
    out_fs, out_base = filesystem(index_folder, storage_options)
    with tempfile.TemporaryDirectory() as tmp:
        local = {role: os.path.join(tmp, name) for role, name in names.items()}
        faiss.write_index(index, local["index"])
        np.save(local["vectors"], vectors.astype(np.float16 if cfg.rerank_dtype == "float16" else np.float32))
        pq.write_table(meta, local["meta"])
        files_rel = {role: posixpath.join(build_folder, name) for role, name in names.items()}
        out_fs.makedirs(posixpath.join(out_base, build_folder), exist_ok=True)
        for role, path in local.items():
            out_fs.put(path, posixpath.join(out_base, files_rel[role]))
        return ShardFiles(
            rows=len(vectors),
            files=files_rel,
            bytes={role: os.path.getsize(p) for role, p in local.items()},
            sha256={role: sha256_file(p) for role, p in local.items()},
        )


def build_index(cfg: Config, force: bool = False, lease: Lease | None = None) -> IndexManifest:
    """Build the index of cfg.model.version from the committed embeddings under output.root, unless the
    current index holds exactly those units (by their markers' digests) and `force` is off.

    It takes the partition's lease (one writer per root and version) unless the caller, a run, holds it.
    """
    partition = Partition(cfg.output.root, "image", cfg.model.version, cfg.output.storage_options)
    if lease is not None:
        return _build(cfg, partition, force)
    with Lease(partition, "index-" + secrets.token_hex(4), cfg.run.lease_timeout_s, purpose="index build"):
        return _build(cfg, partition, force)


def _build(cfg: Config, partition: Partition, force: bool) -> IndexManifest:
    import ray

    from embedding.index.search import self_check

    started = time.time()
    version, root, options = cfg.model.version, cfg.output.root, cfg.output.storage_options
    markers = partition.markers()
    if not markers:
        raise ConfigError(
            f"no committed embeddings of model version '{version}' under {root}: run `embedding run` first"
        )
    identity = partition.identity() or {}
    check_same(identity, identity_for(cfg), f"output {root} (model version '{version}')")
    files, rows = [], []
    for unit_id, marker in sorted(markers.items()):
        for table, count in (
            ("embeddings", marker["rows_embedded"]),
            (FRAMES_TABLE, marker.body.get("rows_frames", 0)),
        ):
            if count:
                files.append(partition.part_path(table, unit_id))
                rows.append(count)
    units = sorted({posixpath.basename(f).removeprefix("part-").removesuffix(".parquet") for f in files})
    if not files:
        raise ConfigError(f"model version '{version}' under {root} has no embedded rows to index")
    folder = index_dir(root, version)
    digests = {u: markers[u].digest for u in units}
    if not force:
        try:
            current = read_manifest(folder, options)
            if current.units == digests and current.model_version == version and current.identity == identity:
                return current  # it holds exactly the committed units
        except ConfigError:
            pass  # no index yet, or one of an older format: build
    _check_versions(partition, files)
    dim = identity.get("dim") or get_version(version, cfg.model).dim
    kind: IndexKind = choose(sum(rows), dim, cfg.index)
    trained = create(kind, dim)
    if kind.needs_training:
        trained.train(_train_sample(partition, files, rows, cfg.index.train_sample, seed=0))
    blob = faiss.serialize_index(trained)
    build_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    build_folder = f"build-{build_id}"
    groups = _split_files(files, rows, min(cfg.index.shards, len(files)))
    connect_ray(cfg.ray)
    task = ray.remote(num_cpus=1)(fill_shard)
    blob_ref = ray.put(blob)
    shards = ray.get(
        [
            task.remote(blob_ref, group, n, root, options, build_folder, folder, cfg.index, 1)
            for n, group in enumerate(groups)
        ]
    )
    manifest = IndexManifest(
        model_version=version,
        kind=kind.kind,
        factory=kind.factory,
        dim=dim,
        rows=sum(s.rows for s in shards),
        shards=shards,
        rerank=0 if kind.exact else cfg.index.rerank,
        rerank_dtype=cfg.index.rerank_dtype,
        nprobe=cfg.index.nprobe,
        ef_search=cfg.index.ef_search,
        metadata_columns=_metadata_columns(partition, files),
        sources=[posixpath.relpath(f, partition.base) for f in files],
        units=digests,
        identity=identity,
        built_at=datetime.now(UTC).isoformat(),
        build_seconds=0.0,
        build_id=build_id,
        self_check={},
    )
    manifest.self_check = self_check(folder, manifest, options, cfg.index.self_check_queries)
    manifest.build_seconds = round(time.time() - started, 3)
    write_manifest(folder, manifest, options)  # the switch: readers now load the new build
    _remove_old_builds(folder, build_folder, options)
    return manifest


def _metadata_columns(partition: Partition, files: list[str]) -> list[str]:
    """The columns a result carries besides its id and scores (from an images and a frames file)."""
    names: list[str] = []
    for path in [next((f for f in files if f"/{t}/" in f), None) for t in ("embeddings", FRAMES_TABLE)]:
        if path:
            schema = _indexed_rows(pq.read_schema(path, filesystem=partition.fs).empty_table()).schema
            names += [c for c in schema.names if c not in FIXED and c not in names]
    return names


def _remove_old_builds(folder: str, keep: str, storage_options: dict) -> None:
    fs, base = filesystem(folder, storage_options)
    for path in fs.ls(base, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if name.startswith("build-") and name != keep:
            fs.rm(path, recursive=True)
