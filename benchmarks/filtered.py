"""Filtered search (issue 24): `python -m benchmarks.index --filters`.

    python -m benchmarks.index --filters --rows 1000000 --queries 200 --out /tmp/bench-filters

Method, all in one run, on the clustered collection of benchmarks/index.py with two carried columns drawn
independently of the vectors (seeded per unit): `category` ("a" for 50% of the rows, "b" 5%, "c" 0.1%,
"d" the rest) and `taken_on` (a date, uniform over 1,000 days from 2022-01-01).

1. Commit the collection and build its index with the job's `build_index` (`--reuse` keeps what --out
   holds: its data, columns and index).
2. Truth: per filter, the exact top-10 among the rows that pass (float32 vectors, numpy, batched).
3. The project's `Index.nearest` one query at a time on one thread, after a warm-up on other queries: p50
   and p99 latency, QPS and recall@10 within the filter, for no filter and for category and date filters
   keeping 50%, 5% and 0.1% of the rows (and dates at 1%, 0.4% and 0.2%). A filter's rows are found once
   and kept (a page of results and the next one ask the same filter): that first evaluation is timed
   apart ("rows found ms").

Targets: p50 with any filter at most 2x the unfiltered p50; recall@10 within the filter >= 0.98.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from benchmarks.index import VERSION, K, Mixture, bench_config, commit_units
from embedding.index.build import build_index
from embedding.index.filters import Filter
from embedding.index.search import Index
from embedding.index.where import parse_where

DAYS, FIRST_DAY = 1000, dt.date(2022, 1, 1)
Predicate = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (category, day number) -> passes
QUARTERS = "taken_on in (2022-03-01, 2022-06-01, 2022-09-01, 2022-12-01)"
# name -> (the filter's text, the same filter in numpy, computed apart from the project's code)
FILTERS: dict[str, tuple[str | None, Predicate]] = {
    "none": (None, lambda c, d: np.ones(len(c), bool)),
    "category 50%": ("category = a", lambda c, d: c == "a"),
    "category 5%": ("category = b", lambda c, d: c == "b"),
    "category 0.1%": ("category = c", lambda c, d: c == "c"),
    "date 50%": ("taken_on >= 2022-01-01 and taken_on < 2023-05-16", lambda c, d: d < 500),
    "date 5%": ("taken_on between 2023-01-01 and 2023-02-19", lambda c, d: (d >= 365) & (d <= 414)),
    "date 1%": ("taken_on between 2024-01-01 and 2024-01-10", lambda c, d: (d >= 730) & (d <= 739)),
    "date 0.4%": (QUARTERS, lambda c, d: np.isin(d, [59, 151, 243, 334])),
    "date 0.2%": ("taken_on between 2024-02-28 and 2024-02-29", lambda c, d: (d >= 788) & (d <= 789)),
    "date 0.1%": ("taken_on = 2024-02-29", lambda c, d: d == 789),  # one day of 1,000
}


def columns(rows: range, seed: int) -> dict[str, pa.Array]:
    """The carried columns of a unit's rows, independent of the vectors."""
    rng = np.random.default_rng(10**7 + seed)
    draw = rng.random(len(rows))
    category = np.where(draw < 0.5, "a", np.where(draw < 0.55, "b", np.where(draw < 0.551, "c", "d")))
    days = rng.integers(0, DAYS, len(rows))
    return {
        "category": pa.array(category, pa.string()),
        "taken_on": pa.array([FIRST_DAY + dt.timedelta(days=int(d)) for d in days], pa.date32()),
    }


def _truth(vectors: np.ndarray, queries: np.ndarray, passing: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per filter, the true top-K row numbers of each query among the passing rows."""
    best = {name: np.full((len(queries), K), -1, np.int64) for name in passing}
    scores = {name: np.full((len(queries), K), -np.inf, np.float32) for name in passing}
    for start in range(0, len(vectors), 100_000):
        block = np.asarray(vectors[start : start + 100_000], np.float32)
        all_scores = queries @ block.T
        for name, mask in passing.items():
            part = np.where(mask[start : start + len(block)], all_scores, -np.inf)
            merged = np.concatenate([scores[name], part], axis=1)
            numbers = np.broadcast_to(np.arange(start, start + len(block)), part.shape)
            rows = np.concatenate([best[name], numbers], 1)
            top = np.argsort(-merged, axis=1, kind="stable")[:, :K]
            scores[name] = np.take_along_axis(merged, top, 1)
            best[name] = np.take_along_axis(rows, top, 1)
    return best


def _measure(index: Index, queries: np.ndarray, where: Filter | None, truth: np.ndarray, ids: list) -> dict:
    found_rows_ms = None
    if where is not None:
        started = time.perf_counter()
        for shard in index.shards:
            shard.passing(where)
        found_rows_ms = round(1000 * (time.perf_counter() - started), 2)
    times, recalls = [], []
    for query, true in zip(queries, truth, strict=True):
        started = time.perf_counter()
        found = index.nearest(query, K, where)
        times.append(time.perf_counter() - started)
        got = {ids[c.shard][c.row] for c in found}
        recalls.append(len(got & set(true[true >= 0].tolist())) / max(1, min(K, int((true >= 0).sum()))))
    ms = np.array(times) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "qps": round(len(queries) / float(np.sum(times)), 1),
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "rows_found_ms": found_rows_ms,
    }


def run(args: argparse.Namespace) -> None:
    mixture = Mixture(args.clusters)
    cfg = bench_config(args.out / "out", args)
    build_s = None
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        commit_units(args.out, mixture, args.rows, args.unit_rows, columns=columns)
        started = time.perf_counter()
        build_index(cfg, force=True)
        build_s = round(time.perf_counter() - started, 1)
        ray.shutdown()
    vectors = np.load(args.out / "vectors.f32.npy", mmap_mode="r")
    index = Index.for_version(str(args.out / "out"), VERSION)
    index.threads = 1
    # Row numbers in collection order, per shard (img-0000042 -> 42), and the columns in that order.
    ids = [np.array([int(i[4:]) for i in s.meta.column("image_id").to_pylist()]) for s in index.shards]
    order = np.concatenate(ids)
    category = np.empty(len(order), object)
    category[order] = np.concatenate(
        [s.meta.column("category").to_numpy(zero_copy_only=False) for s in index.shards]
    )
    day = np.empty(len(order), np.int64)
    epoch = (FIRST_DAY - dt.date(1970, 1, 1)).days
    day[order] = np.concatenate([s.meta.column("taken_on").cast(pa.int32()).to_numpy() for s in index.shards])
    day -= epoch
    passing = {name: predicate(category, day) for name, (_, predicate) in FILTERS.items()}
    queries = mixture.draw(args.queries, seed=10**6)
    truth = _truth(vectors, queries, passing)
    for query in mixture.draw(50, seed=10**6 + 1):  # warm-up: the page cache, FAISS's first calls
        index.nearest(query, K)
    results = {}
    for name, (where, _) in FILTERS.items():
        parsed = parse_where(where) if where else None
        measured = _measure(index, queries, parsed, truth[name], ids)
        results[name] = {"share": round(float(passing[name].mean()), 5), **measured}
    base = results["none"]["p50_ms"]
    for result in results.values():
        result["p50_vs_unfiltered"] = round(result["p50_ms"] / base, 2)
    manifest = index.manifest
    about = {"rows": manifest.rows, "factory": manifest.factory, "shards": len(manifest.shards)}
    about |= {"nprobe": manifest.nprobe, "rerank": manifest.rerank, "build_s": build_s}
    print(json.dumps({**about, "filters": results}, indent=1))
    print("\n| filter | rows kept | p50 ms | p99 ms | QPS | p50 / unfiltered | recall@10 | rows found ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        found = r["rows_found_ms"] if r["rows_found_ms"] is not None else ""
        print(
            f"| {name} | {r['share']:.2%} | {r['p50_ms']} | {r['p99_ms']} | {r['qps']} | "
            f"{r['p50_vs_unfiltered']} | {r['recall_at_10']} | {found} |"
        )
