"""Index benchmark (issue 4): the project's index on clustered unit vectors against exact FAISS search.

    python -m benchmarks.index --rows 1000000 --queries 1000 --out /tmp/bench-index \
        --budget-mb 280 --set index.nprobe=16 --set index.rerank=100

Method, all in one run on this machine:

1. Data: `--clusters` centres uniform on the unit sphere (seeded), each with a noise scale drawn from
   [0.3, 0.6]; a point is its centre plus isotropic Gaussian noise of per-dimension sigma scale/sqrt(D)
   (expected noise norm = scale x the centre's norm), re-normalised. Queries are drawn the same way with
   another seed, so they are not in the data. Points are generated in units of `--unit-rows` (float32),
   committed as embedding units through `Partition.commit` with the job's `OutputSchemas`, and kept in a
   float32 memory-mapped file for the ground truth. Generation + commit time is reported on its own.
2. Build: the job's own `build_index(cfg)` (kind from `kinds.choose` and `--budget-mb` unless
   `--set index.factory=...`); build time is its wall time (Ray already started, self-check included).
3. Exact search: FAISS `IndexFlatIP` over the float32 vectors gives the true top-10 (batched); its
   one-query-at-a-time, one-thread QPS on `--flat-queries` queries is the baseline.
4. The project's `Index.nearest`, one query at a time on one thread (after a warm-up on other queries):
   QPS and recall@10 against the exact ids; `--sweep` tries other nprobe:rerank pairs.
5. Memory: bytes per vector of the FAISS indexes' own memory (shard `.faiss` sizes, and the RSS growth of
   reading them whole with `faiss.read_index`), and apart from it the id/metadata maps (file and in-RAM
   Arrow size) and the memory-mapped re-ranking vectors (on disk).

`--filters` measures filtered search instead (issue 24): see benchmarks/filtered.py.
`--incremental` measures instead the index's updates (append 1%, retire 1%, append 10%) against full
rebuilds of the same units (issue 22): see benchmarks/incremental.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import psutil
import pyarrow as pa

from embedding.config import Config
from embedding.config_file import load_config
from embedding.index.build import build_index
from embedding.index.search import Index
from embedding.store.partition import Partition
from embedding.store.schemas import OutputSchemas, embedding_type, file_metadata

DIM, K, VERSION = 1024, 10, "demo"


class Mixture:
    """The seeded cluster mixture: fixed centres and scales, points drawn by seed."""

    def __init__(self, clusters: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((clusters, DIM), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.scales = rng.uniform(0.3, 0.6, clusters).astype(np.float32)

    def draw(self, rows: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        which = rng.integers(0, len(self.centres), rows)
        points = rng.standard_normal((rows, DIM), dtype=np.float32)
        points *= (self.scales[which] / np.sqrt(DIM))[:, None]
        points += self.centres[which]
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        return points


def unit_id(number: int) -> str:
    return f"unit{number:05d}"


def commit_units(
    root: Path,
    mixture: Mixture,
    rows: int,
    unit_rows: int,
    first_row: int = 0,
    first_unit: int = 0,
    file: str = "vectors.f32.npy",
    columns: Callable[[range, int], dict[str, pa.Array]] | None = None,
) -> np.ndarray:
    """Commit the data as embedding units (as the job would); returns a float32 memmap of it (root/file).

    Image ids run from img-{first_row}, unit ids from unit{first_unit}; unit n is drawn with seed 1 + n.
    `columns(ids, n)`: carried columns of unit n's rows.
    """
    carried = [] if columns is None else [pa.field(k, v.type) for k, v in columns(range(1), 0).items()]
    metadata = file_metadata({"model_version": VERSION})
    schemas = OutputSchemas("image", DIM, "float32", carried, metadata)
    part = Partition(str(root / "out"), "image", VERSION)
    vectors = np.lib.format.open_memmap(root / file, "w+", np.float32, (rows, DIM))
    for number, start in enumerate(range(0, rows, unit_rows), start=first_unit):
        chunk = mixture.draw(min(unit_rows, rows - start), seed=1 + number)
        vectors[start : start + len(chunk)] = chunk
        n, ids = len(chunk), range(first_row + start, first_row + start + len(chunk))
        table = pa.Table.from_pydict(
            {
                "image_id": [f"img-{i:07d}" for i in ids],
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(chunk.reshape(-1)), type=embedding_type(DIM)
                ),
                "model_version": pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(n, np.int32)), pa.array([VERSION])
                ),
                "uri": [f"/images/img-{i:07d}.jpg" for i in ids],
                "width": pa.array(np.full(n, 224, np.int32)),
                "height": pa.array(np.full(n, 224, np.int32)),
                "content_sha256": ["0" * 64] * n,
                **(columns(ids, number) if columns is not None else {}),
            },
            schema=schemas.embeddings(),
        )
        unit = unit_id(number)
        marker = {"unit_id": unit, "rows_embedded": n, "rows_failed": 0, "errors_by_code": {}}
        part.commit(unit, table, schemas.errors().empty_table(), marker)
    vectors.flush()
    return vectors


def exact_search(vectors: np.ndarray, queries: np.ndarray, timed: int) -> tuple[np.ndarray, float]:
    """True top-k ids (batched, all threads) and the one-thread, one-query-at-a-time QPS of IndexFlatIP."""
    flat = faiss.IndexFlatIP(DIM)
    for start in range(0, len(vectors), 100_000):
        flat.add(np.ascontiguousarray(vectors[start : start + 100_000]))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    truth = flat.search(queries, K)[1]
    faiss.omp_set_num_threads(1)
    qps = one_at_a_time(lambda q: flat.search(q[None], K), queries[:timed])[0]
    flat.reset()
    return truth, qps


def one_at_a_time(search: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[float, list]:
    started = time.perf_counter()
    results = [search(q) for q in queries]
    return len(queries) / (time.perf_counter() - started), results


def measure(
    index: Index,
    queries: np.ndarray,
    truth: np.ndarray,
    ids: list[np.ndarray],
    retired: np.ndarray | None = None,
) -> dict:
    """One-thread QPS and recall@k of `Index.nearest`, one query at a time (and, given the ids of retired
    rows, how many of those it returned)."""
    qps, found = one_at_a_time(lambda q: [ids[c.shard][c.row] for c in index.nearest(q, K)], queries)
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)])
    out = {"recall_at_10": round(float(recall), 4), "qps_one_thread": round(qps, 1)}
    if retired is not None:
        out["retired_returned"] = int(np.isin(np.concatenate([np.asarray(f) for f in found]), retired).sum())
    return out


def shard_ids(index: Index) -> list[np.ndarray]:
    """Per shard, the integer image id of each row (img-0000042 -> 42), tombstoned rows included."""
    return [np.array([int(i[4:]) for i in s.meta.column("image_id").to_pylist()]) for s in index.shards]


def bench_config(root: Path, args: argparse.Namespace) -> Config:
    """The job's config for an output root: the demo version, --budget-mb and the --set overrides."""
    overrides = [f"output.root={root}", f"model.version={VERSION}"]
    return load_config(None, [*overrides, f"index.memory_budget_mb={args.budget_mb}", *args.set])


def index_memory(folder: Path, index: Index) -> dict:
    """Bytes per vector: FAISS index files, RSS growth of reading them whole, maps, re-ranking vectors."""
    rows, shards = index.manifest.rows, index.manifest.shards
    size = {
        role: sum((folder / s.files[role]).stat().st_size for s in shards)
        for role in ("index", "meta", "vectors")
    }
    process = psutil.Process()
    before = process.memory_info().rss
    loaded = [faiss.read_index(str(folder / s.files["index"])) for s in shards]
    grown = process.memory_info().rss - before
    del loaded
    return {
        "index_file_bytes_per_vector": round(size["index"] / rows, 1),
        "index_rss_bytes_per_vector": round(grown / rows, 1),
        "maps_file_bytes_per_vector": round(size["meta"] / rows, 1),
        "maps_arrow_bytes_per_vector": round(sum(s.meta.nbytes for s in index.shards) / rows, 1),
        "rerank_vectors_disk_bytes_per_vector": round(size["vectors"] / rows, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--unit-rows", type=int, default=50_000)
    parser.add_argument("--budget-mb", type=int, default=280, help="index.memory_budget_mb for kinds.choose")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. index.nprobe=16")
    parser.add_argument("--flat-queries", type=int, default=100, help="queries timed on IndexFlatIP")
    parser.add_argument("--sweep", default="", help="more nprobe:rerank pairs to measure, e.g. 8:50,16:200")
    parser.add_argument(
        "--out", type=Path, help="default /tmp/bench-index (/tmp/bench-incremental with --incremental)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="measure the data and index a previous run left in --out"
    )
    parser.add_argument(
        "--rebuild-steps",
        choices=["all", "last"],
        default="all",
        help="with --incremental: compare every step with a full rebuild, or the last one only",
    )
    parser.add_argument(
        "--filters",
        action="store_true",
        help="filtered search at 50%%, 5%% and 0.1%% of the rows: benchmarks/filtered.py",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="updates (append 1%%, retire 1%%, append 10%%) against rebuilds: benchmarks/incremental.py",
    )
    args = parser.parse_args()
    default = "/tmp/bench-incremental" if args.incremental else "/tmp/bench-filters" if args.filters else None
    args.out = args.out or Path(default or "/tmp/bench-index")
    if args.filters:
        from benchmarks.filtered import run as run_filtered

        run_filtered(args)
        return
    if args.incremental:
        from benchmarks.incremental import run

        run(args)
        return
    mixture = Mixture(args.clusters)
    cfg = bench_config(args.out / "out", args)
    if args.reuse:
        vectors = np.load(args.out / "vectors.f32.npy", mmap_mode="r")
        manifest, write_s, build_s = None, None, None
    else:
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        vectors = commit_units(args.out, mixture, args.rows, args.unit_rows)
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        build_index(cfg, force=True)
        build_s = time.perf_counter() - started
        ray.shutdown()

    queries = mixture.draw(args.queries, seed=10**6)
    truth, flat_qps = exact_search(vectors, queries, min(args.flat_queries, args.queries))
    del vectors
    index = Index.for_version(str(args.out / "out"), VERSION)
    index.threads = 1
    manifest = index.manifest
    built = (manifest.nprobe, manifest.rerank)
    ids = shard_ids(index)
    warm_up = mixture.draw(100, seed=10**6 + 1)
    for query in warm_up:
        index.nearest(query, K)
    shipped = measure(index, queries, truth, ids)
    sweep = {}
    for pair in filter(None, args.sweep.split(",")):
        index.manifest.nprobe, index.manifest.rerank = map(int, pair.split(":"))
        sweep[pair] = measure(index, queries, truth, ids)
    folder = args.out / "out" / "index" / f"model_version={VERSION}"
    result = {
        "rows": manifest.rows,
        "dim": DIM,
        "clusters": args.clusters,
        "queries": args.queries,
        "kind": manifest.kind,
        "factory": manifest.factory,
        "shards": len(manifest.shards),
        "nprobe": built[0],
        "rerank": built[1],
        "train_sample": cfg.index.train_sample,
        "budget_mb": args.budget_mb,
        "data_write_s": None if write_s is None else round(write_s, 1),
        "build_s": None if build_s is None else round(build_s, 1),
        **index_memory(folder, index),
        **shipped,
        "flat_qps_one_thread": round(flat_qps, 2),
        "self_check": manifest.self_check,
        "sweep": sweep,
    }
    print(json.dumps(result, indent=1))
    print(
        "\n| rows | factory | shards | nprobe | rerank | build s | index B/vec (file / RSS) | recall@10 | "
        "QPS 1 thread | flat QPS |\n|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {manifest.rows:,} | {manifest.factory} | {len(manifest.shards)} | {built[0]} | "
        f"{built[1]} | {result['build_s']} | {result['index_file_bytes_per_vector']} / "
        f"{result['index_rss_bytes_per_vector']} | {shipped['recall_at_10']} | "
        f"{shipped['qps_one_thread']} | {result['flat_qps_one_thread']} |"
    )


if __name__ == "__main__":
    main()
