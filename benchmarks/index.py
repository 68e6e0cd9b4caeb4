"""Index benchmark: 1,000,000 x 1024 clustered unit vectors, the project's index against exact search.

    python benchmarks/index.py [--rows 1000000] [--queries 1000] [--budget-mb 280] [--shards 2]

Data (DESIGN.md): 1,000 cluster centres uniform on the sphere; each point is its centre plus isotropic
Gaussian noise whose norm is a per-cluster scale drawn from [0.3, 0.6] (times the centre's unit norm), then
re-normalised; the queries are drawn the same way and are not in the data. The vectors are committed as
embedding units exactly as the job writes them, and the index is built by the job's own `build_index` with
the kind its rules choose for the memory budget. In the same run: exact top-10 by FAISS `IndexFlatIP`
(also timed, as the baseline), then the project's search one query at a time on one thread.

Bytes per vector in RAM counts the FAISS indexes' own memory (their serialised size: codes, ids,
quantizer, OPQ matrix); the id/metadata maps and the memory-mapped re-ranking vectors are reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from embedding.config import load_config
from embedding.index.build import build_index
from embedding.index.search import Index
from embedding.outputs import Partition
from embedding.rows import embedding_type
from embedding.sink import OutputSchemas, file_metadata

DIM, CLUSTERS = 1024, 1000


def mixture(rows: int, seed: int) -> np.ndarray:
    """Unit vectors of the seeded cluster mixture (centres fixed by seed 0, points by `seed`)."""
    centre_rng = np.random.default_rng(0)
    centres = centre_rng.normal(size=(CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = centre_rng.uniform(0.3, 0.6, CLUSTERS).astype(np.float32)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, CLUSTERS, rows)
    noise = rng.standard_normal((rows, DIM), dtype=np.float32) * (scales[which, None] / np.sqrt(DIM))
    points = centres[which] + noise
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def commit_vectors(root: Path, rows: int, unit_rows: int) -> np.ndarray:
    """Write the data as committed embedding units (as the job would); returns the float32 vectors."""
    schemas = OutputSchemas("image", DIM, "float32", [], file_metadata({"model_version": "demo"}))
    part = Partition(str(root), "image", "demo")
    vectors = np.empty((rows, DIM), np.float32)
    for unit, start in enumerate(range(0, rows, unit_rows)):
        chunk = mixture(min(unit_rows, rows - start), seed=1 + unit)
        vectors[start : start + len(chunk)] = chunk
        n = len(chunk)
        table = pa.Table.from_pydict(
            {
                "image_id": [f"v{i:07d}" for i in range(start, start + n)],
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(chunk.reshape(-1)), type=embedding_type(DIM)
                ),
                "model_version": pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(n, np.int32)), pa.array(["demo"])
                ),
                "uri": [f"mem://{i}" for i in range(start, start + n)],
                "width": pa.array(np.full(n, 1, np.int32)),
                "height": pa.array(np.full(n, 1, np.int32)),
                "content_sha256": [""] * n,
            },
            schema=schemas.embeddings(),
        )
        marker = {"unit_id": f"u{unit:05d}", "rows_embedded": n, "rows_failed": 0, "errors_by_code": {}}
        part.commit(f"u{unit:05d}", table, schemas.errors().empty_table(), marker)
    return vectors


def one_thread_qps(search, queries: np.ndarray) -> tuple[float, list]:
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    results = [search(q) for q in queries]
    return len(queries) / (time.perf_counter() - started), results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--budget-mb", type=int, default=280, help="index.memory_budget_mb for the kind rules"
    )
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument(
        "--set", action="append", default=[], help="more config overrides, e.g. index.nprobe=16"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-index"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    vectors = commit_vectors(args.out, args.rows, unit_rows=50_000)
    write_s = time.perf_counter() - started
    cfg = load_config(
        None,
        [
            f"output.root={args.out}",
            "model.version=demo",
            f"index.shards={args.shards}",
            f"index.memory_budget_mb={args.budget_mb}",
            "index.self_check_queries=200",
            *args.set,
        ],
    )
    started = time.perf_counter()
    manifest = build_index(cfg, force=True)
    build_s = time.perf_counter() - started
    ray.shutdown()

    queries = mixture(args.queries, seed=10**6)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    del vectors
    flat_qps, truth = one_thread_qps(lambda q: exact.search(q[None], 10)[1][0], queries)
    exact.reset()  # frees its 4 GB
    index = Index.for_version(str(args.out), "demo")
    index.threads = 1
    ids = [
        np.array([int(i[1:]) for i in shard.meta.column("image_id").to_pylist()]) for shard in index.shards
    ]
    qps, found = one_thread_qps(lambda q: [ids[c.shard][c.row] for c in index.nearest(q, 10)], queries)
    recall = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))
    folder = Path(args.out) / "index" / "model_version=demo"
    sizes = {
        role: sum((folder / s.files[role]).stat().st_size for s in manifest.shards)
        for role in ("index", "meta", "vectors")
    }
    result = {
        "rows": manifest.rows,
        "dim": DIM,
        "kind": manifest.kind,
        "factory": manifest.factory,
        "shards": len(manifest.shards),
        "nprobe": manifest.nprobe,
        "rerank": manifest.rerank,
        "data_write_s": round(write_s, 1),
        "build_s": round(build_s, 1),
        "index_bytes_per_vector": round(sizes["index"] / manifest.rows, 1),
        "maps_bytes_per_vector": round(sizes["meta"] / manifest.rows, 1),
        "rerank_vectors_bytes_per_vector_on_disk": round(sizes["vectors"] / manifest.rows, 1),
        "recall_at_10": round(recall, 4),
        "qps_one_thread": round(qps, 1),
        "flat_qps_one_thread": round(flat_qps, 2),
        "self_check": manifest.self_check,
    }
    print(json.dumps(result, indent=1))
    print(
        f"\n| {result['rows']:,} | {result['factory']} | {result['shards']} | {result['build_s']} s | "
        f"{result['index_bytes_per_vector']} | {result['recall_at_10']} | {result['qps_one_thread']} | "
        f"{result['flat_qps_one_thread']} |"
    )


if __name__ == "__main__":
    main()
