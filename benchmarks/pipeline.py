"""Whole-process wall time of `embedding run` against a naive single-process loop, on the same photos.

    python -m benchmarks.pipeline [--count 4000] [--photos /tmp/bench-photos]

Both run as fresh processes (imports, model loading and, for the job, Ray's start-up included) over the
same manifest of 1-12 MP JPEGs (benchmarks/photos.py). The job runs with its defaults for this machine and
the index stage off, since the naive loop builds none. The naive loop: benchmarks/naive_loop.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks.photos import upscaled_photos

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], log: Path) -> float:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return time.perf_counter() - started


def write_manifest(paths: list[Path], path: Path) -> None:
    pq.write_table(pa.table({"image_id": [p.stem for p in paths], "uri": [str(p) for p in paths]}), path)


def job_config(work: Path, manifest: Path, model: dict, overrides: dict | None = None) -> Path:
    tree = {
        "input": {"manifest": str(manifest)},
        "output": {"root": str(work / "job-out")},
        "model": model,
        "index": {"enabled": False},
    }
    for section, values in (overrides or {}).items():
        tree.setdefault(section, {}).update(values)
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def compare(work: Path, manifest: Path, model: dict) -> dict:
    """Run the naive loop and the job on one manifest; returns their wall times and the job's summary."""
    config = job_config(work, manifest, model)
    naive = timed(
        [
            sys.executable,
            "benchmarks/naive_loop.py",
            str(manifest),
            str(work / "naive.parquet"),
            "--config",
            str(config),
            "--version",
            model["version"],
        ],
        work / "naive.log",
    )
    job = timed([sys.executable, "-m", "embedding.cli", "run", str(config)], work / "job.log")
    summary = json.loads(next((work / "job-out" / "runs").glob("*/summary.json")).read_text())
    return {
        "naive_s": round(naive, 1),
        "job_s": round(job, 1),
        "speedup": round(naive / job, 2),
        "job_rows_per_s": summary["rows_per_s"],
        "job_stages": summary["stages"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--photos", type=Path, default=Path("/tmp/bench-photos"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-pipeline"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for stale in ("job-out",):
        subprocess.run(["rm", "-rf", str(args.work / stale)], check=True)
    paths = upscaled_photos(args.photos / "upscaled", args.count)
    manifest = args.work / "manifest.parquet"
    write_manifest(paths, manifest)
    result = {"images": len(paths), **compare(args.work, manifest, {"version": "demo"})}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
