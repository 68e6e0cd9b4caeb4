"""Planning a large manifest: time and the driver's memory, before and after; and bytes read per run.

    python -m benchmarks.manifest [--rows 1000000 10000000] [--before-repo PATH]

Each measurement is a fresh process over a manifest of N rows (`image_id`, `uri`; pyarrow's default row
groups of 1,048,576 rows) and an empty output: listing the manifest (with its content digest), cutting it
into units of 256 rows, and planning the fate of every row. "After" plans in Ray tasks (local Ray,
2 CPUs), as `embedding run` does for manifests of this size; "before" is the older checkout's planning, all
in the driver. The driver's peak RSS is its own (VmHWM), reported as the growth over the process's
RSS after its imports and Ray's start-up.

Bytes read: the read stage of a run (with unit_rows 64) over a single-row-group manifest of 1M rows, every
manifest read counted through a wrapper of the file object, before and after. "Before" reads the first 500
of its 15,625 units (each reads the whole row group, about 0.1 s) and scales bytes and rows to all units.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]

PLAN = textwrap.dedent(
    """
    import json, sys, time
    version, path, root = sys.argv[1:4]
    def rss():  # this process's peak RSS: VmHWM starts afresh at exec (ru_maxrss keeps the parent's)
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    from embedding.store.manifest import find_files, plan_units
    from embedding.store.partition import Partition
    from embedding.job.plan import make_plan
    if version == "after":
        import ray
        from embedding.job.plan import RayTasks
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = rss()
    t0 = time.perf_counter()
    files = find_files([path], {})
    t1 = time.perf_counter()
    units = plan_units(files, 256)
    part = Partition(root, "image", "demo")
    if version == "after":
        plan = make_plan("image", files, units, part, {}, False, {}, RayTasks())
        counts = plan.counts.__dict__
    else:
        plan = make_plan("image", files, units, part, {}, False, {})
        counts = plan.counts.__dict__
    t2 = time.perf_counter()
    print(json.dumps({"list_s": round(t1 - t0, 2), "plan_s": round(t2 - t1, 2), "rss_base_mb": round(base),
                      "rss_peak_mb": round(rss()), "growth_mb": round(rss() - base), "counts": counts}))
    """
)

READ = textwrap.dedent(
    """
    import json, sys
    version, path, root = sys.argv[1:4]
    SAMPLE = 500
    import fsspec.implementations.local as local
    counted = {"bytes": 0}
    original = local.LocalFileOpener.read
    def read(self, *args, **kwargs):
        data = original(self, *args, **kwargs)
        counted["bytes"] += len(data)
        return data
    local.LocalFileOpener.read = read
    original_readinto = getattr(local.LocalFileOpener, "readinto", None)
    if original_readinto:
        def readinto(self, b):
            n = original_readinto(self, b)
            counted["bytes"] += n or 0
            return n
        local.LocalFileOpener.readinto = readinto
    from embedding.store.manifest import find_files, plan_units
    from embedding.store.partition import Partition
    files = find_files([path], {})
    units = plan_units(files, 64)
    part = Partition(root, "image", "demo")
    counted["bytes"] = 0  # the run's reads of rows, not the listing's
    if version == "after":
        from embedding.job.plan import make_plan
        from embedding.stages.read import ReadSettings, unit_rows
        plan = make_plan("image", files, units, part, {}, False, {})
        planned = counted["bytes"]
        settings = ReadSettings([], True, False, {}, part, False)
        rows = sum(t.num_rows for task in plan.reads for _, t in unit_rows(task, settings, plan.fates))
    else:
        from embedding.job.plan import make_plan
        from embedding.store.manifest import read_rows
        plan = make_plan("image", files, units, part, {}, False, {})
        planned = counted["bytes"]
        rows = 0
        sampled = plan.reads[:SAMPLE]  # each unit reads the whole row group: 0.1 s a unit, so a sample
        for unit in sampled:
            table = read_rows(unit["source_file"], unit["start"], unit["stop"], ["image_id", "uri"], {})
            rows += table.num_rows
        scale = len(plan.reads) / len(sampled)
        counted["bytes"] = planned + (counted["bytes"] - planned) * scale
        rows = round(rows * scale)
    print(json.dumps({"rows": rows, "planning_bytes": planned, "reading_bytes": counted["bytes"] - planned}))
    """
)


def manifest(rows: int, row_group_size: int | None = None) -> Path:
    path = Path(f"/tmp/bench-manifest/m-{rows}-{row_group_size or 'default'}.parquet")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = pa.array(np.char.add("img-", np.arange(rows).astype(str)))
        uris = pa.array(np.char.add(np.char.add("images/", np.arange(rows).astype(str)), ".jpg"))
        kwargs = {"row_group_size": row_group_size} if row_group_size else {}
        pq.write_table(pa.table({"image_id": ids, "uri": uris}), path, **kwargs)
    return path


def in_process(script: str, repo: Path, *args: str) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(repo)}
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd="/tmp",
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--before-repo", default=str(Path("/tmp/embedding-before")))
    parser.add_argument("--skip-before", action="store_true")
    args = parser.parse_args()
    versions = {"after": REPO} if args.skip_before else {"before": Path(args.before_repo), "after": REPO}
    results: dict = {}
    for rows in args.rows:
        path = manifest(rows)
        for name, repo in versions.items():
            key = f"plan {name} {rows}"
            results[key] = in_process(PLAN, repo, name, str(path), "/tmp/bench-manifest/out")
            print(key, json.dumps(results[key]), flush=True)
    single = manifest(1_000_000, row_group_size=1_000_000)
    size = single.stat().st_size
    for name, repo in versions.items():
        key = f"bytes read {name}"
        results[key] = {
            **in_process(READ, repo, name, str(single), "/tmp/bench-manifest/out"),
            "file_bytes": size,
        }
        print(key, json.dumps(results[key]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
