"""Preprocessing throughput on one core: the project's decode path versus open_clip's reference transform.

    python -m benchmarks.preprocess [--photos /tmp/bench-photos] [--count 60] [--size 224]

Reference: `preprocess(PIL.Image.open(path))` with open_clip's eval transform (bicubic resize of the
shortest side, centre crop, to tensor, normalise). Ours: `embedding.media.image.decode(bytes)` to uint8 pixels
(reduced-scale JPEG decoding, resampling only the kept region; normalisation happens later on the model's
device). Both run pinned to one CPU core with one thread, over the same files, after a warm-up pass.
Parity: mean absolute difference of the pixels in 0-255 levels, and cosine of the demo model's embeddings
of both paths.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from benchmarks.photos import real_photos, upscaled_photos
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess
from embedding.models.loading import load_model


def pin_to_one_core() -> int:
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    return core


def rate(fn, items: list, passes: int = 2) -> float:
    """Items per second of the last of `passes` passes (the first warms caches)."""
    for _ in range(passes):
        started = time.perf_counter()
        for item in items:
            fn(item)
        elapsed = time.perf_counter() - started
    return len(items) / elapsed


def reference_uint8(transform, data: bytes, prep: Preprocess) -> np.ndarray:
    tensor = transform(Image.open(io.BytesIO(data)))
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)
    return ((tensor * std + mean) * 255).round().clamp(0, 255).permute(1, 2, 0).numpy()


def parity(files: list[bytes], size: int) -> dict[str, float]:
    """Pixel MAD at `size` px, and demo-model cosine between both paths at the demo's own size."""
    prep = Preprocess(size=(size, size))
    transform = open_clip.image_transform(size, is_train=False)
    mad = [
        np.abs(reference_uint8(transform, d, prep) - decode(d, prep, ImageLimits()).pixels).mean()
        for d in files
    ]
    demo = load_model("demo", device="cpu")
    demo_prep = demo.preprocess
    demo_transform = open_clip.image_transform(
        demo_prep.size[0], is_train=False, mean=demo_prep.mean, std=demo_prep.std
    )
    mean = torch.tensor(demo_prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(demo_prep.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = torch.stack([demo_transform(Image.open(io.BytesIO(d))) for d in files])
        ours = torch.from_numpy(np.stack([decode(d, demo_prep, ImageLimits()).pixels for d in files]))
        ours = (ours.permute(0, 3, 1, 2).float() / 255 - mean) / std
        a, b = demo.model.encode_image(ref).float(), demo.model.encode_image(ours).float()
    cosine = torch.nn.functional.cosine_similarity(a, b).numpy()
    return {
        "mad_mean": float(np.mean(mad)),
        "mad_max": float(np.max(mad)),
        "demo_cosine_min": float(cosine.min()),
        "demo_cosine_mean": float(cosine.mean()),
    }


def measure(name: str, paths: list[Path], size: int) -> dict:
    files = [p.read_bytes() for p in paths]
    prep = Preprocess(size=(size, size))
    transform = open_clip.image_transform(size, is_train=False)
    megapixels = [Image.open(p).size[0] * Image.open(p).size[1] / 1e6 for p in paths]
    # Both read from bytes in memory: the comparison is of decoding and resizing alone.
    reference = rate(lambda d: transform(Image.open(io.BytesIO(d))), files)
    ours = rate(lambda d: decode(d, prep, ImageLimits()), files)
    return {
        "set": name,
        "images": len(paths),
        "megapixels": [round(min(megapixels), 2), round(max(megapixels), 2)],
        "reference_images_per_s": round(reference, 2),
        "ours_images_per_s": round(ours, 2),
        "speedup": round(ours / reference, 2),
        **{k: round(v, 4) for k, v in parity(files, size).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=Path("/tmp/bench-photos"))
    parser.add_argument("--count", type=int, default=60, help="upscaled photos (1-12 MP)")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    real, upscaled = real_photos(args.photos / "real"), upscaled_photos(args.photos / "upscaled", args.count)
    core = pin_to_one_core()  # after making the photos, which uses every core
    results = [
        measure("real (0.14-2 MP)", real, args.size),
        measure("upscaled (1-12 MP)", upscaled, args.size),
    ]
    print(json.dumps({"core": core, "size": args.size, "results": results}, indent=1))
    print(
        "\n| set | images | MP | reference img/s | ours img/s | speedup | MAD mean / max | demo cosine min |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['set']} | {r['images']} | {r['megapixels'][0]}-{r['megapixels'][1]} | "
            f"{r['reference_images_per_s']} | {r['ours_images_per_s']} | {r['speedup']}x | "
            f"{r['mad_mean']} / {r['mad_max']} | {r['demo_cosine_min']} |"
        )


if __name__ == "__main__":
    main()
