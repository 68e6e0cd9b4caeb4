"""`embedding run` against clip-retrieval's `clip-retrieval inference`, same images, same model and weights.

    python -m benchmarks.peer [--count 4000] [--archs ViT-S-32 RN50 RN50:bf16]

Each `--archs` entry is ARCH or ARCH:PRECISION (our `inference.precision`; clip-retrieval runs fp32).
clip-retrieval runs once per architecture.

clip-retrieval pins versions that conflict with ours, so it is installed into its own virtual environment
(`--peer-venv`, with an old setuptools that still has
`pkg_resources`, and this machine's torch). For each architecture the benchmark saves
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
from benchmarks.pipeline import job_config, timed, write_manifest

PEER = ["clip-retrieval==2.45.0", "setuptools>=77,<81", "torch==2.14.1", "torchvision==0.29.1"]


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


def agreement(peer_out: Path, ours_out: Path) -> dict:
    """Cosine between clip-retrieval's vector and ours for each image (same weights, same file)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    peer_ids = [
        Path(p).stem
        for f in sorted((peer_out / "metadata").glob("*.parquet"))
        for p in pq.read_table(f).column("image_path").to_pylist()
    ]
    peer = np.concatenate([np.load(f) for f in sorted((peer_out / "img_emb").glob("*.npy"))])
    ours = pa.concat_tables(
        pq.read_table(f, columns=["image_id", "embedding"])
        for f in sorted((ours_out / "embeddings").glob("*/*.parquet"))
    )
    vectors = np.stack(ours.column("embedding").to_numpy(zero_copy_only=False))
    row = {image_id: i for i, image_id in enumerate(ours.column("image_id").to_pylist())}
    pairs = [(row[image_id], i) for i, image_id in enumerate(peer_ids) if image_id in row]
    a = vectors[[o for o, _ in pairs]].astype(np.float32)
    b = peer[[p for _, p in pairs]].astype(np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {
        "compared": len(pairs),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_min": round(float(cos.min()), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--archs", nargs="+", default=["ViT-S-32", "RN50", "RN50:bf16"])
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
    peer_times: dict[str, float] = {}
    for entry in args.archs:
        arch, _, precision = entry.partition(":")
        precision = precision or "fp32"
        weights, dim = random_weights(arch, args.work)
        if arch not in peer_times:
            peer_times[arch] = run_peer(
                venv, images, args.work / f"peer-{arch}", arch, weights, args.work / f"peer-{arch}.log"
            )
        peer_s = peer_times[arch]
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
        work = args.work / f"ours-{arch}-{precision}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir()
        config = job_config(work, manifest, model, {"inference": {"precision": precision}})
        ours_s = timed([sys.executable, "-m", "embedding.cli", "run", str(config)], work / "job.log")
        summary = json.loads(next((work / "job-out" / "runs").glob("*/summary.json")).read_text())
        results.append(
            {
                "arch": arch,
                "images": len(paths),
                "clip_retrieval_s": round(peer_s, 1),
                "ours_s": round(ours_s, 1),
                "speedup": round(peer_s / ours_s, 2),
                "precision": precision,
                "ours_stages": summary["stages"],
                "vs_clip_retrieval": agreement(args.work / f"peer-{arch}", work / "job-out"),
            }
        )
    print(json.dumps(results, indent=1))
    for r in results:
        print(
            f"| {r['arch']} | {r['precision']} | {r['images']} | {r['clip_retrieval_s']} s | "
            f"{r['ours_s']} s | {r['speedup']}x | {r['vs_clip_retrieval']['cosine_min']} |"
        )


if __name__ == "__main__":
    main()
