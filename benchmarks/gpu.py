"""GPU throughput of the encoder, for the `device` tool: ViT-H-14 (random weights, fp16) on one GPU.

    python -m benchmarks.gpu [--images 2000] [--batch 256] [--workers 14]

1. Model only: uint8 batches already on the GPU, normalised there (as the job's encoder does), then
   `encode_image` in fp16; images/s over timed batches after a warm-up.
2. From JPEGs: the job's CPU path (`embedding.media.image.decode`, reduced-scale JPEG decoding) in a process
   pool feeding the same encoder through uint8 batches, without Ray (Ray does not fit the device tool's
   transfer limit); images/s of the whole loop. Photos: benchmarks/photos.py (scikit-image) when it is
   installed, else the project's synthetic generator at 1-12 MP.
Prints one JSON object with the card's name. Target on one H100: >= 1,500 images/s model-only, >= 1,000
images/s from JPEGs.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import torch

from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess

PREP = Preprocess(size=(224, 224))


def photos(folder: Path, count: int) -> list[Path]:
    try:
        from benchmarks.photos import upscaled_photos

        return upscaled_photos(folder, count)
    except ImportError:  # no scikit-image on this machine: synthetic scenes at photo sizes
        from embedding.demo.synthetic import COLOURS, SHAPES, encode, random_spec, render

        folder.mkdir(parents=True, exist_ok=True)
        rng, paths = random.Random(0), []
        for i in range(count):
            spec = random_spec(rng, rng.choice(list(COLOURS)), rng.choice(SHAPES), 1000, 4000)
            path = folder / f"synthetic-{i:05d}.jpg"
            if not path.exists():
                path.write_bytes(encode(render(spec), spec))
            paths.append(path)
        return paths


def pixels_of(path: Path) -> np.ndarray:
    return decode(path.read_bytes(), PREP, ImageLimits()).pixels


class Encoder:
    def __init__(self, device: torch.device):
        self.model = open_clip.create_model("ViT-H-14", precision="fp16", device=device).eval()
        self.mean = torch.tensor(PREP.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(PREP.std, device=device).view(1, 3, 1, 1) * 255
        self.device = device

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        features = self.model.encode_image(((x - self.mean) / self.std).half())
        return torch.nn.functional.normalize(features.float(), dim=-1)


def model_only(encoder: Encoder, batch: int, steps: int) -> float:
    data = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8, device=encoder.device)
    for _ in range(3):
        encoder(data)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        encoder(data)
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def from_jpegs(encoder: Encoder, paths: list[Path], batch: int, workers: int) -> float:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(pixels_of, paths[: workers * 2]))  # start the workers
        torch.cuda.synchronize()
        started = time.perf_counter()
        pending: list[np.ndarray] = []
        for pixels in pool.map(pixels_of, paths, chunksize=8):
            pending.append(pixels)
            if len(pending) == batch:
                encoder(torch.from_numpy(np.stack(pending)).pin_memory())
                pending = []
        if pending:
            encoder(torch.from_numpy(np.stack(pending)).pin_memory())
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--photos", type=Path, default=Path("/tmp/bench-photos/upscaled"))
    args = parser.parse_args()
    device = torch.device("cuda")
    encoder = Encoder(device)
    result = {
        "card": torch.cuda.get_device_name(0),
        "model": "ViT-H-14 fp16 (random weights)",
        "batch": args.batch,
        "model_only_images_per_s": round(model_only(encoder, args.batch, args.steps), 1),
    }
    paths = photos(args.photos, args.images)
    result["jpeg_images"] = len(paths)
    result["from_jpegs_images_per_s"] = round(from_jpegs(encoder, paths, args.batch, args.workers), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
