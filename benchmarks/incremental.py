"""Index updates against full rebuilds (issue 22): `python -m benchmarks.index --incremental`.

    python -m benchmarks.index --incremental --rows 1000000 --unit-rows 10000 --queries 1000 \
        --out /tmp/bench-incremental

Method, all in one run, on the clustered collection of benchmarks/index.py (`--rows` vectors committed in
units of `--unit-rows`, the index kind its rules choose for `--budget-mb`, `--set` overrides applied):

1. Base: commit the collection and build its index (`build_index(cfg, force=True)`); that wall time is the
   full build the updates are compared with. `--reuse` keeps the base --out holds when it is this one (the
   same rows and units, indexed) and that build's time (base-build.json, else index.json's build_seconds).
2. Three steps on a working copy of the base output root (hard links: committed and index files are never
   written in place, only replaced or removed, so the base stays reusable): append 1% (new units of new
   ids, drawn from the same mixture with new seeds), retire 1% (whole base units, chosen seeded), append
   10% (both shares of the base rows). After each, the job's `build_index(cfg)` (asked "auto") must update.
   Measured: its wall time, and where it went (the index stage's own steps, timed by wrapping them where
   embedding.index.build looks them up); recall@10 against exact search (FAISS IndexFlatIP) over the live
   vectors (base + appended - retired); QPS one query at a time on one thread after a warm-up; and how
   many ids of retired units search returned. Each build starts with a fresh process's FAISS threads.
3. After each step, a full rebuild over the same units: a hard-linked copy of the committed files without
   the index folder, `build_index(copy_cfg, asked="rebuild")`, measured on the same queries and truth.
   The update's and the rebuild's QPS are each the best of PASSES passes, taken in turn (a shared machine).

Targets: an update's time <= 5% of the full build's for a 1% step, <= 15% for the 10% step; its recall@10
within 0.005 of the rebuild's (or better); its QPS within 10% of the rebuild's; no retired id returned.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks import index as bench
from benchmarks.index import DIM, VERSION, K, Mixture, unit_id
from embedding.errors import ConfigError
from embedding.index import build, check
from embedding.index.build import build_index
from embedding.index.search import Index
from embedding.index.store import index_dir, read_manifest
from embedding.store.partition import Partition

FRESH_THREADS = faiss.omp_get_max_threads()  # FAISS's own default, before anything here sets it
PASSES = 2
STEPS = (("append 1%", "append", 0.01), ("retire 1%", "retire", 0.01), ("append 10%", "append", 0.10))
# The index stage's steps, timed where build.py (and the self-check in check.py) look them up; a name
# the module no longer has is not timed (its time goes to `other`).
PHASES = (
    (build, "committed_units", "read markers"),
    (build, "check_versions", "check versions"),
    (build, "train_sample", "train sample"),
    (build, "fill_shards", "fill"),
    (build, "text_probes", "text probes"),
    (build, "self_check", "self-check"),
    (check, "exact_kth_scores", "self-check: exact truth"),  # inside the self-check
    (build, "_metadata_columns", "metadata columns"),
    (build, "write_manifest", "switch"),
    (build, "remove_unnamed_builds", "clean-up"),
)


class Phases:
    """Seconds spent in each of PHASES while the block runs; what the rest took is `other`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def _timed(self, name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        return wrapper

    def __enter__(self) -> Phases:
        self._saved = [(module, attr, getattr(module, attr, None)) for module, attr, _ in PHASES]
        for (module, attr, name), (_, _, fn) in zip(PHASES, self._saved, strict=True):
            if fn is not None:
                setattr(module, attr, self._timed(name, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for module, attr, fn in self._saved:
            if fn is not None:
                setattr(module, attr, fn)

    def report(self, total: float) -> dict[str, float]:
        top = sum(s for name, s in self.seconds.items() if ": " not in name)
        return {**{n: round(s, 2) for n, s in self.seconds.items()}, "other": round(total - top, 2)}


class Live:
    """The live vectors unit by unit (memory-mapped slices) and their integer image ids: what the exact
    search runs over. `len` and slicing are all `exact_search` asks of its vectors."""

    def __init__(self) -> None:
        self.units: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, vectors: np.ndarray, first_row: int, first_unit: int, unit_rows: int) -> None:
        for number, start in enumerate(range(0, len(vectors), unit_rows), start=first_unit):
            chunk = vectors[start : start + unit_rows]
            ids = np.arange(first_row + start, first_row + start + len(chunk))
            self.units[unit_id(number)] = (ids, chunk)

    def retire(self, units: list[str]) -> np.ndarray:
        """Drop these units; returns their ids."""
        return np.concatenate([self.units.pop(u)[0] for u in units])

    def __len__(self) -> int:
        return sum(len(ids) for ids, _ in self.units.values())

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self))
        pieces, offset = [], 0
        for _, vectors in self.units.values():
            lo, hi = max(start - offset, 0), min(stop - offset, len(vectors))
            if lo < hi:
                pieces.append(vectors[lo:hi])
            offset += len(vectors)
        return np.concatenate(pieces) if pieces else np.empty((0, DIM), np.float32)

    def ids(self) -> np.ndarray:
        return np.concatenate([ids for ids, _ in self.units.values()])


def link_tree(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """A copy of an output root as hard links (its files are write-once), without its lease file and
    without the top-level folders `skip`."""

    def ignored(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == source
        return [n for n in names if n == "lease" or (top and n in skip)]

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=os.link, ignore=ignored)


def _base_held(args: argparse.Namespace) -> bool:
    """Whether --out holds this run's base: its vectors, its units committed, exactly those indexed."""
    root = str(args.out / "out")
    units = {unit_id(n) for n in range(-(-args.rows // args.unit_rows))}
    try:
        vectors = np.load(args.out / "vectors.f32.npy", mmap_mode="r")
        manifest = read_manifest(index_dir(root, VERSION), {})
    except (OSError, ValueError, ConfigError):
        return False
    markers = Partition(root, "image", VERSION).markers()
    held = set(markers) == units and set(manifest.units) == units
    return held and vectors.shape == (args.rows, DIM) and manifest.trained is not None


def _base(args: argparse.Namespace, mixture: Mixture) -> dict:
    """Commit and index the base collection (or take the one --out holds, with --reuse)."""
    record = args.out / "base-build.json"
    if args.reuse and _base_held(args):
        manifest = read_manifest(index_dir(str(args.out / "out"), VERSION), {})
        saved = json.loads(record.read_text()) if record.exists() else {}
        return {**saved, "reused": True, "build_s": saved.get("build_s", manifest.build_seconds)}
    if args.reuse:
        print(f"--reuse: {args.out} does not hold this base (rows, units, index): building it", flush=True)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    started = time.perf_counter()
    bench.commit_units(args.out, mixture, args.rows, args.unit_rows)
    write_s = time.perf_counter() - started
    with Phases() as phases:
        started = time.perf_counter()
        manifest = build_index(bench.bench_config(args.out / "out", args), force=True)
        build_s = time.perf_counter() - started
    base = {
        "rows": manifest.rows,
        "factory": manifest.factory,
        "shards": len(manifest.shards),
        "data_write_s": round(write_s, 1),
        "build_s": round(build_s, 2),
        "phases": phases.report(build_s),
        "self_check": manifest.self_check,
    }
    record.write_text(json.dumps(base))
    return {**base, "reused": False}


def _compared(
    roots: list[Path], queries: np.ndarray, warm: np.ndarray, truth: np.ndarray, retired: np.ndarray
) -> list[dict]:
    """measure() of each index (after a warm-up) PASSES times in turn; each one's best QPS."""
    opened = [Index.for_version(str(root), VERSION) for root in roots]
    for index in opened:
        index.threads = 1
        for query in warm:
            index.nearest(query, K)
    runs: list[list[dict]] = [[] for _ in opened]
    for _ in range(PASSES):
        for index, done in zip(opened, runs, strict=True):
            done.append(bench.measure(index, queries, truth, bench.shard_ids(index), retired))
    return [
        {
            **max(done, key=lambda r: r["qps_one_thread"]),
            "qps_passes": [r["qps_one_thread"] for r in done],
            "shards": len(index.shards),
            "delta_shards": sum(s.delta for s in index.manifest.shards),
        }
        for index, done in zip(opened, runs, strict=True)
    ]


def _timed_build(root: Path, args: argparse.Namespace, asked: str) -> tuple[Any, float, dict]:
    faiss.omp_set_num_threads(FRESH_THREADS)
    with Phases() as phases:
        started = time.perf_counter()
        manifest = build_index(bench.bench_config(root, args), asked=asked)
        seconds = time.perf_counter() - started
    return manifest, seconds, phases.report(seconds)


def run(args: argparse.Namespace) -> None:
    import ray

    if args.rows * 1.11 > bench.bench_config(args.out / "out", args).index.local_rows:
        # Fills past index.local_rows run as Ray tasks: start Ray before any timing, as the job does.
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    mixture = Mixture(args.clusters)
    base = _base(args, mixture)
    print(f"base: {json.dumps(base)}", flush=True)
    queries, warm = mixture.draw(args.queries, seed=10**6), mixture.draw(100, seed=10**6 + 1)
    work, again = args.out / "work", args.out / "rebuild"
    link_tree(args.out / "out", work / "out")
    live = Live()
    live.add(np.load(args.out / "vectors.f32.npy", mmap_mode="r"), 0, 0, args.unit_rows)
    base_units, retired = sorted(live.units), np.empty(0, np.int64)
    next_row, next_unit, rng = args.rows, len(base_units), np.random.default_rng(22)
    steps = []
    for number, (name, kind, share) in enumerate(STEPS):
        started = time.perf_counter()
        if kind == "append":
            rows = round(share * args.rows)
            file = f"append-{number}.f32.npy"
            vectors = bench.commit_units(work, mixture, rows, args.unit_rows, next_row, next_unit, file)
            live.add(vectors, next_row, next_unit, args.unit_rows)
            next_row, next_unit = next_row + rows, next_unit + -(-rows // args.unit_rows)
        else:
            count = max(1, round(share * args.rows / args.unit_rows))
            gone = sorted(rng.choice([u for u in base_units if u in live.units], count, replace=False))
            Partition(str(work / "out"), "image", VERSION).retire(gone)
            retired = np.concatenate([retired, live.retire(gone)])
        data_s = time.perf_counter() - started
        manifest, seconds, phases = _timed_build(work / "out", args, "auto")
        assert manifest.change is not None
        positions, _ = bench.exact_search(live, queries, 0)  # type: ignore[arg-type]  # Live: len and slices
        truth = live.ids()[positions]
        share_of_build = seconds / base["build_s"]
        if args.rebuild_steps == "last" and number < len(STEPS) - 1:
            # No rebuild to compare with (each costs a full build): the update's own figures only.
            (update,) = _compared([work / "out"], queries, warm, truth, retired)
            step = _step(name, manifest, len(live), data_s, seconds, share_of_build, share, phases, update)
            steps.append(step)
            print(f"{name}: {json.dumps(step)}", flush=True)
            continue
        link_tree(work / "out", again / "out", skip=("index",))
        _, rebuild_s, rebuild_phases = _timed_build(again / "out", args, "rebuild")
        update, fresh = _compared([work / "out", again / "out"], queries, warm, truth, retired)
        step = _step(name, manifest, len(live), data_s, seconds, share_of_build, share, phases, update)
        step["share_of_rebuild"] = round(seconds / rebuild_s, 4)
        step["rebuild"] = {**fresh, "seconds": round(rebuild_s, 2), "phases": rebuild_phases}
        step["targets"]["recall"] = update["recall_at_10"] >= fresh["recall_at_10"] - 0.005
        step["targets"]["qps"] = update["qps_one_thread"] >= 0.9 * fresh["qps_one_thread"]
        steps.append(step)
        print(f"{name}: {json.dumps(step)}", flush=True)
        shutil.rmtree(again, ignore_errors=True)
    if ray.is_initialized():
        ray.shutdown()
    _report(args, base, steps)


def _step(
    name: str,
    manifest: Any,
    live: int,
    data_s: float,
    seconds: float,
    share_of_build: float,
    share: float,
    phases: dict,
    update: dict,
) -> dict:
    """A step's figures; its comparison with a rebuild, where one ran, is added by the caller."""
    return {
        "step": name,
        "action": manifest.change.action,
        "reason": manifest.change.reason,
        "live_rows": live,
        "index_rows": manifest.rows,
        "retired_rows": manifest.retired_rows(),
        "delta_rows": manifest.delta_rows(),
        "data_s": round(data_s, 1),
        "seconds": round(seconds, 2),
        "share_of_build": round(share_of_build, 4),
        "phases": phases,
        "self_check": manifest.self_check,
        "update": update,
        "rebuild": None,
        "targets": {
            "update": manifest.change.action == "update",
            "time": share_of_build <= (0.05 if share <= 0.01 else 0.15),
            "no_retired": update["retired_returned"] == 0,
        },
    }


def _report(args: argparse.Namespace, base: dict, steps: list[dict]) -> None:
    result = {
        **{k: getattr(args, k) for k in ("rows", "unit_rows", "clusters", "queries", "budget_mb", "set")},
        "dim": DIM,
        "base": base,
        "steps": steps,
        "all_targets_met": all(all(s["targets"].values()) for s in steps),
    }
    print(json.dumps(result, indent=1))
    print(
        "\n| step | action | seconds | share of build | recall@10 update | recall@10 rebuild | qps update | "
        "qps rebuild | retired returned |\n|---|---|---|---|---|---|---|---|---|"
    )
    for s in steps:
        up, re = s["update"], s["rebuild"] or {"recall_at_10": "-", "qps_one_thread": "-"}
        print(
            f"| {s['step']} | {s['action']} | {s['seconds']} | {s['share_of_build']:.1%} | "
            f"{up['recall_at_10']} | {re['recall_at_10']} | {up['qps_one_thread']} | "
            f"{re['qps_one_thread']} | {up['retired_returned']} |"
        )
    print(f"\nfull build: {base['build_s']} s{' (reused)' if base['reused'] else ''}; rebuilds: ", end="")
    print(", ".join(f"{s['step']} {s['rebuild']['seconds']} s" for s in steps if s["rebuild"]))
    for s in steps:
        print(f"{s['step']} update's time: " + ", ".join(f"{n} {v} s" for n, v in s["phases"].items()))
