"""Small collections, whole-process time: `embedding run` against a naive loop and clip-retrieval.

    python -m benchmarks.small [--counts 1 100 400 2000] [--arch ViT-S-32]

Photos of 0.3-4 MP as a photo library holds them (benchmarks/photos.py `library_photos`: scikit-image's
photos at their own size or rescaled into the range, 10% PNG). Every run is a fresh process, timed from
start to exit (imports, Ray's start-up, model loading included), over the same manifest, with random
weights of ARCH (no model hub here), fp32 unless said. The naive loop: benchmarks/naive_loop.py;
clip-retrieval: as benchmarks/peer.py installs and runs it (its own virtual environment). At the largest
count the job runs once more with `inference.precision: bf16`. Each job run's phases come from its
summary.json (where its time went: driver start, checks and Ray start, planning, pipeline, commit, index,
shutdown), and the first batch encoded after the process started.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.peer import peer_venv, random_weights, run_peer
from benchmarks.photos import library_photos
from benchmarks.pipeline import job_config, timed, write_manifest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 100, 400, 2000])
    parser.add_argument("--arch", default="ViT-S-32")
    parser.add_argument("--photos", type=Path, default=Path("/tmp/bench-photos/library"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-small"))
    parser.add_argument("--peer-venv", type=Path, default=Path("/tmp/bench-peer/venv"))
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    venv = None if args.skip_peer else peer_venv(args.peer_venv)
    weights, dim = random_weights(args.arch, args.work)
    version = f"bench-{args.arch}"
    model = {
        "version": version,
        "versions": {
            version: {"architecture": args.arch, "weights": str(weights), "dim": dim, "languages": ["en"]}
        },
    }
    results = []
    for count in args.counts:
        paths = library_photos(args.photos, count)
        work = args.work / f"n{count}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        (work / "images").mkdir(parents=True)
        for p in paths:
            (work / "images" / p.name).symlink_to(p)
        manifest = work / "manifest.parquet"
        write_manifest(paths, manifest)
        row: dict = {"photos": count}
        for precision in ("fp32", "bf16") if count == max(args.counts) else ("fp32",):
            run_dir = work / f"ours-{precision}"
            run_dir.mkdir()
            config = job_config(run_dir, manifest, model, {"inference": {"precision": precision}})
            seconds = timed([sys.executable, "-m", "embedding.cli", "run", str(config)], run_dir / "job.log")
            summary = json.loads(next((run_dir / "job-out" / "runs").glob("*/summary.json")).read_text())
            row[f"ours_{precision}_s"] = round(seconds, 1)
            row[f"phases_{precision}"] = summary["phases_s"]
            row[f"first_batch_{precision}_s"] = summary.get("first_batch_encoded_s")
        (work / "naive").mkdir()
        naive_config = job_config(work / "naive", manifest, model)  # the naive loop takes the model from it
        row["naive_s"] = round(
            timed(
                [
                    sys.executable,
                    "benchmarks/naive_loop.py",
                    str(manifest),
                    str(work / "naive.parquet"),
                    "--config",
                    str(naive_config),
                    "--version",
                    version,
                ],
                work / "naive.log",
            ),
            1,
        )
        if venv is not None:
            row["clip_retrieval_s"] = round(
                run_peer(venv, work / "images", work / "peer", args.arch, weights, work / "peer.log"), 1
            )
        results.append(row)
        print(json.dumps(row), flush=True)
    print("| photos | ours fp32 | ours bf16 | naive loop | clip-retrieval | ours / naive | ours / peer |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        peer = r.get("clip_retrieval_s")
        print(
            f"| {r['photos']} | {r['ours_fp32_s']} s | {r.get('ours_bf16_s', '-')} | {r['naive_s']} s | "
            f"{peer if peer is not None else '-'} s | {r['ours_fp32_s'] / r['naive_s']:.2f}x | "
            f"{r['ours_fp32_s'] / peer if peer else float('nan'):.2f}x |"
        )


if __name__ == "__main__":
    main()
