"""`embedding duplicates`: groups of exact and near copies among the live images of a version's index.

Exact copies share a content digest: the `content_sha256` the job wrote for each image into the committed
embeddings of the units the index holds (the index's own metadata leaves it out). Near copies are found
through the index, never by comparing every pair: the `duplicates.neighbours` nearest rows of every live
image, searched in every shard with the index's own kind and search parameters (IVF shards of one build
share their coarse step, done once per query), are confirmed by their exact cosine from the stored vectors
and kept at `duplicates.cosine` or more. Union-find over both kinds of pairs gives the groups, which
embedding.index.duplicate_groups writes and reads.

An index of up to `index.local_rows` rows is searched in this process, as fill.py fills it; a larger one
in Ray tasks, each searching a slice of one shard's live images against every shard and returning only
the pairs it found. Retired rows are never queries nor answers. Video frames are left out: they have no
content digest, and the frames of one video are near copies of each other by nature.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from faiss import swig_ptr

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.index.coarse import Assigned, SharedCoarse
from embedding.index.duplicate_groups import (
    DuplicateGroup,
    components,
    cosines,
    make_groups,
    offsets,
    write_groups,
)
from embedding.index.kinds import search_parameters
from embedding.index.search import Index, Shard
from embedding.index.store import IndexManifest, index_dir, local_folder, read_manifest
from embedding.store.partition import Partition

BATCH = 2048  # queries per FAISS call: enough for its batched kernels, little memory for the candidates
# A flat index scores exactly (its float32 vectors; the stored ones may be float16): its candidates this far
# under the threshold are confirmed, the others dropped unread. Compressed kinds approximate too coarsely
# for any margin (PQ16x4 scores were off by up to 0.6): every candidate is confirmed, as search re-ranks.
FLAT_MARGIN = 0.01
FLAT_SLACK = 8  # rows more than k that a flat shard is asked for, in place of the rows its selector skips


@dataclass(frozen=True)
class DuplicatesSummary:
    groups: int
    exact_groups: int
    near_groups: int
    members: int  # images in some group
    rows: int  # live images looked at
    cosine: float  # the threshold of near copies
    neighbours: int
    executor: str  # local | ray
    seconds: float
    path: str  # the groups.parquet written
    build_id: str  # of the index the groups come from
    found: tuple[DuplicateGroup, ...] = field(default=(), repr=False)  # what the file holds

    def to_dict(self) -> dict[str, Any]:
        """The counts, the threshold, the file and the build (the groups are in the file)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "found"}


def find_duplicates(cfg: Config, cosine: float | None = None) -> DuplicatesSummary:
    """Find the duplicate groups of cfg.model.version's index and write them (`cosine` overrides
    duplicates.cosine)."""
    started = time.time()
    threshold = cfg.duplicates.cosine if cosine is None else cosine
    if not 0 <= threshold <= 1:
        raise ConfigError(f"--cosine must be between 0 and 1, got {threshold}")
    folder = index_dir(cfg.output.root, cfg.model.version)
    manifest = read_manifest(folder, cfg.output.storage_options)
    index = Index.load(local_folder(folder, manifest, cfg.output.storage_options), manifest)
    index.check_version(cfg.model.version)
    rows, codes = _digest_codes(cfg, index)
    k = cfg.duplicates.neighbours + 1  # a query finds itself
    if manifest.rows > cfg.index.local_rows:
        executor, near = "ray", _pairs_on_ray(cfg, folder, manifest, index, k, threshold)
    else:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        everything = slice(None)
        found = [shard_pairs(index, n, everything, k, threshold) for n in range(len(index.shards))]
        executor, near = "local", np.concatenate(found)
    edges = np.concatenate([near, _exact_pairs(rows, codes)])
    groups = make_groups(index, components(edges[:, 0], edges[:, 1]), rows, codes)
    about = {"cosine": str(threshold), "neighbours": str(cfg.duplicates.neighbours)}
    path = write_groups(cfg, groups, manifest.build_id, about)
    exact = sum(g.kind == "exact" for g in groups)
    return DuplicatesSummary(
        groups=len(groups),
        exact_groups=exact,
        near_groups=len(groups) - exact,
        members=sum(len(g.members) for g in groups),
        rows=int(sum(images(shard).sum() for shard in index.shards)),
        cosine=threshold,
        neighbours=cfg.duplicates.neighbours,
        executor=executor,
        seconds=round(time.time() - started, 3),
        path=path,
        build_id=manifest.build_id,
        found=tuple(groups),
    )


def images(shard: Shard) -> np.ndarray:
    """A boolean per row of a shard: a live image (not retired, not a video frame)."""
    mask = shard.live_mask()
    if "frame_time_s" in shard.meta.column_names:
        mask &= pc.is_null(shard.meta.column("frame_time_s")).to_numpy(zero_copy_only=False)
    return mask


def _digest_codes(cfg: Config, index: Index) -> tuple[np.ndarray, np.ndarray]:
    """The live images that have a content digest: their global rows (ascending) and a number per digest."""
    version, manifest = cfg.model.version, index.manifest
    partition = Partition(cfg.output.root, "image", version, cfg.output.storage_options)
    markers = partition.markers()
    # The units with rows, as the index stage counts them: an index that holds others would report
    # withdrawn images, miss new ones, or pair digests with vectors of another commit.
    held = {
        u: m.digest for u, m in markers.items() if m.body.get("rows_embedded") or m.body.get("rows_frames")
    }
    stale = sorted({u for u, _ in set(held.items()) ^ set(manifest.units.items())})
    if stale:
        raise ConfigError(
            f"the index of model version '{version}' is older than its committed embeddings ({len(stale)} "
            f"units new, changed or withdrawn since, {stale[0]} first): update it with `embedding index "
            "CONFIG` first"
        )
    units = [u for u in sorted(manifest.units) if markers[u].body.get("rows_embedded")]
    digests = partition.read("embeddings", ["image_id", "content_sha256"], units) if units else None
    starts = offsets(index)
    live = [
        pa.table(
            {"image_id": shard.meta.column("image_id").filter(mask), "row": starts[n] + np.flatnonzero(mask)}
        )
        for n, shard in enumerate(index.shards)
        if (mask := images(shard)).any()
    ]
    if digests is None or not live or "content_sha256" not in digests.column_names:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    joined = pa.concat_tables(live).join(digests.select(["image_id", "content_sha256"]), "image_id")
    joined = joined.filter(pc.greater(pc.utf8_length(joined.column("content_sha256")), 0))
    rows = joined.column("row").to_numpy()
    _, codes = np.unique(joined.column("content_sha256").to_numpy(zero_copy_only=False), return_inverse=True)
    order = np.argsort(rows, kind="stable")
    return rows[order], codes[order].astype(np.int64)


def _exact_pairs(rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each row paired with the first row of its digest (a star per digest: enough for union-find)."""
    order = np.lexsort((rows, codes))
    rows, codes = rows[order], codes[order]
    starts = np.ones(len(rows), bool)
    starts[1:] = codes[1:] != codes[:-1]
    first = rows[np.maximum.accumulate(np.where(starts, np.arange(len(rows)), 0))]
    return np.stack([first[~starts], rows[~starts]], axis=1).astype(np.int64)


class Target:
    """One shard as searched for duplicates: the rows it may return (its live images), and how."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.allowed = images(shard)
        skipped = np.flatnonzero(~self.allowed).astype(np.int64)
        self._inner = faiss.IDSelectorBatch(skipped) if len(skipped) else None  # SWIG holds no reference
        self.selector = faiss.IDSelectorNot(self._inner) if self._inner is not None else None
        self.flat = isinstance(shard.index, faiss.IndexFlat)
        self.margin = FLAT_MARGIN if self.flat else np.inf

    def search(
        self, queries: np.ndarray, k: int, floor: float, nprobe: int, ef: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best allowed rows of the shard for each query: (scores, rows), rows -1 where none;
        `floor`: rows under this score may be left out."""
        if self.flat and self.selector is not None:
            return self._flat(queries, k, floor)
        params = search_parameters(self.shard.index, nprobe, max(ef, k), self.selector)
        return self.shard.index.search(queries, k, params=params)

    def _flat(self, queries: np.ndarray, k: int, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's flat search leaves its matrix-product path for one 10x slower under a selector (10k rows,
        4096 queries): search without it, drop the rows it would skip, and search with it again only the
        queries whose dropped rows may have hidden allowed rows at or above the floor."""
        scores, hits = self.shard.index.search(queries, k + FLAT_SLACK)
        last = scores[:, -1].copy()
        skipped = (hits >= 0) & ~self.allowed[hits]
        hits[skipped], scores[skipped] = -1, -np.inf
        again = np.flatnonzero((last >= floor) & ((hits >= 0).sum(axis=1) < k))
        if len(again):
            params = search_parameters(self.shard.index, 1, 1, self.selector)
            scores[again], hits[again] = -np.inf, -1
            scores[again, :k], hits[again, :k] = self.shard.index.search(queries[again], k, params=params)
        return scores, hits


def shard_pairs(index: Index, number: int, part: slice, k: int, threshold: float) -> np.ndarray:
    """The near pairs (global rows, the smaller first) of a part of shard `number`'s live images with the
    live images of every shard: each query's k best rows per shard, confirmed by their exact cosine."""
    targets = [Target(shard) for shard in index.shards]
    starts, manifest = offsets(index), index.manifest
    queried = np.flatnonzero(targets[number].allowed)[part]
    found = [np.empty((0, 2), np.int64)]
    for first in range(0, len(queried), BATCH):
        rows = queried[first : first + BATCH]
        queries = np.asarray(index.shards[number].vectors[rows], np.float32)
        assigned = index.coarse.assign(queries, manifest.nprobe) if index.coarse else None
        for other, target in enumerate(targets):
            if not target.allowed.any():
                continue
            if index.coarse is not None and assigned is not None:
                scores, hits = _preassigned(index.coarse, other, assigned, k, target.selector)
            else:
                floor = threshold - target.margin
                scores, hits = target.search(queries, k, floor, manifest.nprobe, manifest.ef_search)
            query, column = np.nonzero((hits >= 0) & (scores >= threshold - target.margin))
            hit = hits[query, column]
            order = np.argsort(hit, kind="stable")  # ascending rows read the memory-mapped file in order
            query, hit = query[order], hit[order]
            exact = cosines(np.asarray(target.shard.vectors[hit], np.float32), queries[query])
            a, b = starts[number] + rows[query], starts[other] + hit
            keep = (exact >= threshold) & (a != b)
            found.append(np.stack([np.minimum(a, b)[keep], np.maximum(a, b)[keep]], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def _preassigned(
    coarse: SharedCoarse, shard: int, assigned: Assigned, k: int, selector: faiss.IDSelector | None
) -> tuple[np.ndarray, np.ndarray]:
    """SharedCoarse.search for a batch of queries: the k best rows of one shard for each."""
    n = assigned.query.shape[0]
    params = faiss.SearchParametersIVF()
    params.nprobe = assigned.centroids.shape[1]
    if selector is not None:
        params.sel = selector
    scores = np.empty((n, k), np.float32)
    rows = np.empty((n, k), np.int64)
    # As in SharedCoarse.search: the C++ call takes the search parameters, its Python wrapper does not.
    coarse.ivfs[shard].search_preassigned_c(  # type: ignore[attr-defined]
        n,
        swig_ptr(assigned.query),
        k,
        swig_ptr(np.ascontiguousarray(assigned.centroids)),
        swig_ptr(np.ascontiguousarray(assigned.scores)),
        swig_ptr(scores),
        swig_ptr(rows),
        False,
        params,
    )
    return scores, rows


def _pairs_on_ray(
    cfg: Config, folder: str, manifest: IndexManifest, index: Index, k: int, threshold: float
) -> np.ndarray:
    """shard_pairs in Ray tasks: each shard's live images cut into as many slices as the cluster has CPUs
    per shard, one task each, which loads the index itself (memory-mapped) and returns only its pairs."""
    import ray

    from embedding.cluster import connect_ray

    connect_ray(cfg.ray)
    options = cfg.output.storage_options
    slices = max(1, int(ray.cluster_resources().get("CPU", 1)) // len(index.shards))

    def remote_pairs(number: int, part: slice) -> np.ndarray:
        faiss.omp_set_num_threads(1)  # one core per task: the tasks are the parallelism
        mine = Index.load(local_folder(folder, manifest, options), manifest)
        return shard_pairs(mine, number, part, k, threshold)

    task = ray.remote(num_cpus=1)(remote_pairs)
    pending = []
    for number, shard in enumerate(index.shards):
        bounds = np.linspace(0, int(images(shard).sum()), slices + 1).astype(int)
        pending += [task.remote(number, slice(a, b)) for a, b in itertools.pairwise(bounds) if b > a]
    return np.concatenate([np.empty((0, 2), np.int64), *ray.get(pending)])
