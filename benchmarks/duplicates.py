"""Duplicate groups benchmark: `find_duplicates` on the index of an existing benchmark collection.

    python -m benchmarks.index --out /tmp/bench-index                      # the 1M collection, once
    python -m benchmarks.duplicates --out /tmp/bench-index --ignore-digests

Method: the output root under `--out` (as benchmarks/index.py leaves it: `<out>/out`, model version demo)
and its built index; the config is benchmarks.index's `bench_config` (`--budget-mb`, `--set` overrides,
e.g. `--set duplicates.neighbours=20`). An index of more than `index.local_rows` rows is searched in Ray
tasks: Ray is then started first (all CPUs) and its start-up reported apart from the timed call. Reported:
the wall time of `find_duplicates(cfg, cosine)` (reading the index, the digests, the neighbour search,
grouping, writing groups.parquet), the live rows, the groups (exact / near), their members and the largest.

The collections of benchmarks/index.py give every row the same placeholder digest ("0" * 64), which makes
one exact group of the whole collection: `--ignore-digests` still reads them (their time is part of the
run) but groups by cosine alone. Its clustered points lie at cosine 0.75-0.92 from their nearest
neighbours, so there should be no near groups at 0.97: the run measures the cost of the search.

`--rows N` first builds a new collection of N rows into `--out` (which must not exist) with
benchmarks.index's functions, to try the benchmark on a small one.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.index import Mixture, bench_config, commit_units
from embedding.config import Config
from embedding.index import duplicates
from embedding.index.build import build_index
from embedding.index.search import Index
from embedding.index.store import index_dir, read_manifest


def ignore_digests() -> None:
    """Read the digests as find_duplicates does, then forget them (the collection's are placeholders)."""
    read = duplicates._digest_codes

    def none(cfg: Config, index: Index) -> tuple[np.ndarray, np.ndarray]:
        read(cfg, index)
        return np.empty(0, np.int64), np.empty(0, np.int64)

    duplicates._digest_codes = none


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-index"))
    parser.add_argument("--cosine", type=float, default=None, help="default: duplicates.cosine (0.97)")
    parser.add_argument("--budget-mb", type=int, default=280, help="as benchmarks.index (index kind)")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. index.shards=4")
    parser.add_argument("--ignore-digests", action="store_true", help="group by cosine alone (see above)")
    parser.add_argument("--rows", type=int, help="build a new collection of this many rows into --out first")
    parser.add_argument("--unit-rows", type=int, default=50_000, help="with --rows")
    parser.add_argument("--clusters", type=int, default=1000, help="with --rows")
    args = parser.parse_args()
    cfg = bench_config(args.out / "out", args)
    import ray

    if args.rows:
        if args.out.exists():
            parser.error(
                f"--rows builds a new collection: {args.out} exists (it may be a 1M one); name another"
            )
        args.out.mkdir(parents=True)
        commit_units(args.out, Mixture(args.clusters), args.rows, args.unit_rows)
        build_index(cfg, force=True)
    if args.ignore_digests:
        ignore_digests()
    manifest = read_manifest(index_dir(cfg.output.root, cfg.model.version), {})
    started = time.perf_counter()
    if manifest.rows > cfg.index.local_rows and not ray.is_initialized():  # else no Ray, as the command
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = duplicates.find_duplicates(cfg, args.cosine)
    seconds = time.perf_counter() - started
    ray.shutdown()
    largest = max((len(g.members) for g in summary.found), default=0)
    result = {
        **summary.to_dict(),
        "wall_s": round(seconds, 2),
        "ray_start_s": round(ray_start_s, 2),
        "rows_per_s": round(summary.rows / seconds, 1),
        "largest_group": largest,
        "kind": manifest.kind,
        "factory": manifest.factory,
        "shards": len(manifest.shards),
        "cpus": os.cpu_count(),
        "digests": "ignored" if args.ignore_digests else "read",
    }
    print(json.dumps(result, indent=1))
    print(
        "\n| rows | factory | shards | CPUs | executor | cosine | neighbours | groups (exact / near) | "
        "members | largest | s | rows/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {summary.rows:,} | {manifest.factory} | {len(manifest.shards)} | {os.cpu_count()} | "
        f"{summary.executor} | {summary.cosine} | {summary.neighbours} | {summary.groups} "
        f"({summary.exact_groups} / {summary.near_groups}) | {summary.members} | {largest} | "
        f"{seconds:.1f} | {result['rows_per_s']:,} |"
    )


if __name__ == "__main__":
    main()
