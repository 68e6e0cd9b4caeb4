"""Is the driver the limit of one job? Committed rows/s and the driver's own CPU per row, before and after.

    python -m benchmarks.driver [--rows 10000 50000] [--before-repo /path/to/older/checkout]

Each run is a fresh `embedding run` process over a manifest of tiny inline JPEGs (32 x 32 px), with the
stand-in encoder of benchmarks/standin.py (unit vectors at once) and the index off, so the model costs
nothing and what is left is reading, decoding, writing and the driver. The driver's CPU is its own process's
user + system time (psutil; its children, Ray's processes, not counted). The marginal CPU per row is the
difference between the two run sizes divided by the difference in rows, which removes start-up costs.

Runs on local Ray (`ray.num_cpus: 2`) and on a simulated 3-node cluster (`ray.cluster_utils.Cluster`: a
head for the driver and two worker nodes of 1 CPU), then on the cluster with one and with two worker nodes
of 1 CPU whose encoder reserves no CPU (`--scaling-only` runs just these), to show whether rows/s follows
the workers: on a 2-core machine, the second node is the second core's worth of decoding and writing.
"Before" is an older checkout of the project (`--before-repo`, default: a git worktree of the commit
before the driver handled units only), run with the same stand-in.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "995a3f6"


def tiny_jpegs(count: int) -> list[bytes]:
    out = []
    for i in range(16):  # 16 distinct images, repeated: decoding cost is what matters, not variety
        image = Image.new("RGB", (32, 32), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        out.append(buffer.getvalue())
    return [out[i % 16] for i in range(count)]


def manifest(folder: Path, rows: int) -> Path:
    path = folder / f"tiny-{rows}.parquet"
    if not path.exists():
        images = tiny_jpegs(rows)
        table = pa.table(
            {"image_id": [f"t{i:08d}" for i in range(rows)], "image": pa.array(images, pa.binary())}
        )
        pq.write_table(table, path, row_group_size=10_000)
    return path


UNIT_ROWS: int | None = None  # None: the job's default
ACTOR_CPUS = 1.0
DECODE_TASKS: int | None = None  # preprocess.concurrency (None: Ray decides)


def config(folder: Path, source: Path, address: str | None, repo: Path) -> Path:
    tree = {
        "input": {"manifest": str(source), "unit_rows": UNIT_ROWS},
        "output": {"root": str(folder / "out")},
        "model": {"version": "demo"},
        "ray": {"address": address} if address else {"num_cpus": 2},
        "inference": {
            "device": "cpu",
            "batch_size": 256,
            "stage_class": "standin:InstantStage",
            "num_cpus_per_actor": ACTOR_CPUS,
        },
        "index": {"enabled": False},
    }
    if DECODE_TASKS:
        tree["preprocess"] = {"concurrency": DECODE_TASKS}
    if repo == REPO:  # this measures the Ray plan, whatever the run's size (older checkouts have no choice)
        tree["run"] = {"executor": "ray"}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def one_run(repo: Path, source: Path, address: str | None) -> dict:
    """A fresh `embedding run`; returns its wall time, the driver's CPU seconds and the summary."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        folder = Path(tmp)
        path = config(folder, source, address, repo)
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": f"{repo}:{REPO / 'benchmarks'}"}
        env.pop("RAY_ADDRESS", None)
        started = time.perf_counter()
        process = psutil.Popen(
            [sys.executable, "-m", "embedding.cli", "run", str(path)],
            cwd=repo,
            env=env,
            stdout=(folder / "log").open("w"),
            stderr=subprocess.STDOUT,
        )
        cpu = 0.0
        while process.poll() is None:
            try:
                times = process.cpu_times()
                cpu = times.user + times.system  # read until the end: the last reading is the total
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError((folder / "log").read_text()[-3000:])
        summary = json.loads(next((folder / "out" / "runs").glob("*/summary.json")).read_text())
        return {"wall_s": wall, "driver_cpu_s": cpu, "summary": summary}


def measure(repo: Path, sources: dict[int, Path], address: str | None) -> dict:
    runs = {rows: one_run(repo, source, address) for rows, source in sources.items()}
    pipeline = {rows: r["summary"]["stages"]["encode"]["wall_s"] or r["wall_s"] for rows, r in runs.items()}
    result: dict = {
        "runs": {
            rows: {
                "wall_s": round(r["wall_s"], 1),
                "driver_cpu_s": round(r["driver_cpu_s"], 2),
                "rows_per_s_whole": round(rows / r["wall_s"], 1),
                "rows_per_s_pipeline": round(rows / pipeline[rows], 1),
                "embedded": r["summary"]["rows"]["embedded"],
            }
            for rows, r in runs.items()
        }
    }
    if len(runs) == 2:  # the difference of two run sizes removes start-up costs
        (small, a), (large, b) = sorted(runs.items())
        cpu = (b["driver_cpu_s"] - a["driver_cpu_s"]) / (large - small) * 1000
        result["marginal_driver_ms_per_row"] = round(cpu, 4)
    return result


def cluster(workers: int, repo: Path, cpus: int = 1):
    """A simulated cluster whose workers import the project from `repo` and the stand-in encoder."""
    from ray.cluster_utils import Cluster

    # Its raylets and workers inherit this process's environment: the job's PYTHONPATH must be there.
    os.environ["PYTHONPATH"] = f"{repo}:{REPO / 'benchmarks'}"
    simulated = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head: the driver only
    for _ in range(workers):
        simulated.add_node(num_cpus=cpus)
    simulated.wait_for_nodes()
    return simulated


def before_repo(path: str | None) -> Path:
    if path:
        return Path(path)
    target = Path("/tmp/embedding-before")
    if not target.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(target), BEFORE_COMMIT], cwd=REPO, check=True
        )
    return target


def main() -> None:
    global UNIT_ROWS, ACTOR_CPUS, DECODE_TASKS
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs=2, default=[10_000, 50_000])
    parser.add_argument("--before-repo")
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--unit-rows", type=int, help="input.unit_rows of every run (default: the job's)")
    parser.add_argument("--local-only", action="store_true", help="local Ray only, no simulated cluster")
    parser.add_argument("--scaling-only", action="store_true", help="only the 1 and 2 worker node runs")
    args = parser.parse_args()
    UNIT_ROWS = args.unit_rows
    folder = Path("/tmp/bench-driver")
    folder.mkdir(exist_ok=True)
    sources = {rows: manifest(folder, rows) for rows in args.rows}
    versions = (
        {"after": REPO} if args.skip_before else {"before": before_repo(args.before_repo), "after": REPO}
    )
    results: dict = {}
    for name, repo in {} if args.scaling_only else versions.items():
        results[f"{name} local"] = measure(repo, sources, None)
        print(name, "local", json.dumps(results[f"{name} local"]), flush=True)
        if args.local_only:
            continue
        simulated = cluster(2, repo)
        try:
            results[f"{name} 3-node"] = measure(repo, sources, simulated.address)
            print(name, "3-node", json.dumps(results[f"{name} 3-node"]), flush=True)
        finally:
            simulated.shutdown()
    # Scaling on one node: one decode task at a time, then two (the instant encoder reserves no CPU).
    ACTOR_CPUS = 0.0
    for tasks in () if args.local_only else (1, 2):
        DECODE_TASKS = tasks
        key = f"after, local Ray, {tasks} decode task(s)"
        results[key] = measure(REPO, {max(args.rows): sources[max(args.rows)]}, None)["runs"]
        print(key, json.dumps(results[key]), flush=True)
    DECODE_TASKS = None
    # Scaling: worker nodes of 1 CPU each, the instant stand-in encoder reserving none, so each node adds
    # one decode-and-write slot; the driver and the encoder share the rest. Two such nodes use this
    # machine's two cores, so what grows with the second node is the workers' capacity alone.
    largest = {max(args.rows): sources[max(args.rows)]}
    for workers in () if args.local_only else (1, 2):
        simulated = cluster(workers, REPO, cpus=1)
        try:
            results[f"after, {workers} worker node(s)"] = measure(REPO, largest, simulated.address)["runs"]
        finally:
            simulated.shutdown()
        print(
            f"after, {workers} worker node(s)",
            json.dumps(results[f"after, {workers} worker node(s)"]),
            flush=True,
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
