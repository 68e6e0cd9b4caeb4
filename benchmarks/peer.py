"""`embedding run` against clip-retrieval's `clip-retrieval inference`, same images, same model and weights.

    python benchmarks/peer.py [--count 4000] [--archs ViT-S-32 RN50]

clip-retrieval pins versions that conflict with ours, so it is installed into its own virtual environment
(`--peer-venv`, with `setuptools<70` and this machine's torch). For each architecture the benchmark saves
random weights once (no model hub here) as a state dict, passes them to clip-retrieval as
`open_clip:ARCH/<path>` and registers the same file as a model version in our config. Both run as fresh
processes over the same 1-12 MP JPEGs (benchmarks/photos.py); the time is whole-process wall time.
clip-retrieval runs with `--num_prepro_workers` = the machine's cores and images only (no text).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import torch

from benchmarks.photos import upscaled_photos
from benchmarks.pipeline import REPO, job_config, timed, write_manifest

PEER = ["clip-retrieval==2.45.0", "setuptools<70", "torch==2.14.1", "torchvision==0.29.1"]


def peer_venv(path: Path) -> Path:
    """A virtual environment with clip-retrieval (created once)."""
    python = path / "bin" / "python"
    if not (path / "bin" / "clip-retrieval").exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER], check=True)
    return path


def random_weights(arch: str, folder: Path) -> tuple[Path, int]:
    """Seeded random weights of an open_clip architecture, saved as a plain state dict; and its dim."""
    path = folder / f"{arch}-random.pt"
    torch.manual_seed(0)
    model = open_clip.create_model(arch)
    if not path.exists():
        torch.save(model.state_dict(), path)
    return path, open_clip.get_model_config(arch)["embed_dim"]


def run_peer(venv: Path, images: Path, out: Path, arch: str, weights: Path, log: Path) -> float:
    command = [
        str(venv / "bin" / "clip-retrieval"),
        "inference",
        "--input_dataset",
        str(images),
        "--output_folder",
        str(out),
        "--input_format",
        "files",
        "--enable_text",
        "False",
        "--clip_model",
        f"open_clip:{arch}/{weights}",
        "--num_prepro_workers",
        str(os.cpu_count()),
        "--batch_size",
        "64",
        "--use_jit",
        "False",
    ]
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return timed(command, log)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--archs", nargs="+", default=["ViT-S-32", "RN50"])
    parser.add_argument("--precision", default="fp32", help="our inference.precision (e.g. bf16)")
    parser.add_argument("--photos", type=Path, default=Path("/tmp/bench-photos"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-peer"))
    parser.add_argument("--peer-venv", type=Path, default=Path("/tmp/bench-peer/venv"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    venv = peer_venv(args.peer_venv)
    paths = upscaled_photos(args.photos / "upscaled", args.count)
    images = args.work / "images"  # exactly these files, for clip-retrieval's folder reader
    subprocess.run(["rm", "-rf", str(images)], check=True)
    images.mkdir()
    for p in paths:
        (images / p.name).symlink_to(p)
    manifest = args.work / "manifest.parquet"
    write_manifest(paths, manifest)
    results = []
    for arch in args.archs:
        weights, dim = random_weights(arch, args.work)
        peer_s = run_peer(
            venv, images, args.work / f"peer-{arch}", arch, weights, args.work / f"peer-{arch}.log"
        )
        model = {
            "version": f"bench-{arch}",
            "versions": {
                f"bench-{arch}": {
                    "architecture": arch,
                    "weights": str(weights),
                    "dim": dim,
                    "languages": ["en"],
                }
            },
        }
        work = args.work / f"ours-{arch}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir()
        config = job_config(work, manifest, model, {"inference": {"precision": args.precision}})
        ours_s = timed([sys.executable, "-m", "embedding.cli", "run", str(config)], work / "job.log")
        summary = json.loads(next((work / "job-out" / "runs").glob("*/summary.json")).read_text())
        results.append(
            {
                "arch": arch,
                "images": len(paths),
                "clip_retrieval_s": round(peer_s, 1),
                "ours_s": round(ours_s, 1),
                "speedup": round(peer_s / ours_s, 2),
                "precision": args.precision,
                "ours_stages": summary["stages"],
            }
        )
    print(json.dumps(results, indent=1))
    for r in results:
        print(
            f"| {r['arch']} | {r['images']} | {r['clip_retrieval_s']} s | {r['ours_s']} s | {r['speedup']}x |"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
