"""Peak memory of a whole `embedding run` (driver, Ray's processes, workers) over 2,000 and 20,000 images.

    python -m benchmarks.memory [--counts 2000 20000] [--distinct 200] [--executor ray|standalone|auto]

The manifests repeat the URIs of `--distinct` 1-12 MP photos (benchmarks/photos.py) under distinct ids.
The run is started in its own process group; every 0.2 s the benchmark sums the proportional set size
(PSS: shared pages, e.g. Ray's object store, divided among the processes that map them) over the run's
whole process tree, and reports the peak. Target: the larger run's peak within 1.2x of the smaller's.
Every run uses one executor (`run.executor`, default ray), so the sizes compare like with like: a standalone
run (no Ray) of a few thousand rows holds far less than any Ray run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.photos import upscaled_photos
from benchmarks.pipeline import REPO, job_config


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def peak_memory(config: Path, log: Path) -> tuple[int, float]:
    """(peak PSS in bytes, wall seconds) of `embedding run CONFIG`."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "embedding.cli", "run", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        root, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            peak = max(peak, tree_pss(root))
            time.sleep(0.2)
    if process.returncode != 0:
        raise RuntimeError(f"the run failed; see {log}")
    return peak, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--photos", type=Path, default=Path("/tmp/bench-photos"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-memory"))
    parser.add_argument("--executor", default="ray", choices=["ray", "standalone", "auto"])
    args = parser.parse_args()
    photos = [str(p) for p in upscaled_photos(args.photos / "upscaled", args.distinct)]
    results = []
    for count in args.counts:
        work = args.work / str(count)
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir(parents=True)
        manifest = work / "manifest.parquet"
        uris = [photos[i % len(photos)] for i in range(count)]
        pq.write_table(pa.table({"image_id": [f"m{i:06d}" for i in range(count)], "uri": uris}), manifest)
        config = job_config(work, manifest, {"version": "demo"}, {"run": {"executor": args.executor}})
        peak, wall = peak_memory(config, work / "job.log")
        results.append({"images": count, "peak_pss_mib": round(peak / 2**20, 1), "wall_s": round(wall, 1)})
    ratio = results[-1]["peak_pss_mib"] / results[0]["peak_pss_mib"]
    summary = {"executor": args.executor, "results": results, "ratio_largest_to_smallest": round(ratio, 3)}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
