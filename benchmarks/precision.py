"""What bf16 inference on the CPU changes: vectors and search results against fp32, with the demo model.

    python -m benchmarks.precision [--photos /tmp/bench-photos] [--count 200]

The demo model is the one trained model here (random-weight RN50 or ViT vectors are nearly all alike, so
their fp32-vs-bf16 cosine says little). Images: the photos of benchmarks/photos.py and 384 synthetic
sample images (seed 7). For each: cosine between the fp32 and bf16 vector of every image, the top-10
overlap of every colour x shape text query over the synthetic gallery, and the encode rate of both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.photos import upscaled_photos
from embedding.config import InferenceConfig, ModelConfig
from embedding.demo import captions, synthetic
from embedding.demo.quality import spec_pixels
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.stages.encode import Encoder


def encode(encoder: Encoder, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    encoder.encode_pixels(pixels[:64])  # warm-up
    started = time.perf_counter()
    vectors = encoder.encode_pixels(pixels)
    return vectors, len(pixels) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=Path("/tmp/bench-photos"))
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    encoders = {
        p: Encoder("demo", ModelConfig(), InferenceConfig(device="cpu", precision=p))
        for p in ("fp32", "bf16")
    }
    prep = encoders["fp32"].loaded.preprocess
    photos = np.stack(
        [
            decode(p.read_bytes(), prep, ImageLimits()).pixels
            for p in upscaled_photos(args.photos / "upscaled", args.count)
        ]
    )
    specs = synthetic.balanced_specs(384, seed=7)
    gallery = np.stack([spec_pixels(s, prep) for s in specs])
    result = {}
    for name, pixels in (("photos", photos), ("synthetic", gallery)):
        (a, rate_a), (b, rate_b) = (encode(encoders[p], pixels) for p in ("fp32", "bf16"))
        cosine = (a * b).sum(axis=1)
        result[name] = {
            "images": len(pixels),
            "cosine_min": round(float(cosine.min()), 5),
            "cosine_mean": round(float(cosine.mean()), 5),
            "fp32_images_per_s": round(rate_a, 1),
            "bf16_images_per_s": round(rate_b, 1),
        }
        if name == "synthetic":
            overlaps = []
            for colour in synthetic.COLOURS:
                for shape in synthetic.SHAPES:
                    query = captions.query(colour, shape)
                    q32, q16 = (encoders[p].encode_texts([query])[0] for p in ("fp32", "bf16"))
                    top32, top16 = np.argsort(-(a @ q32))[:10], np.argsort(-(b @ q16))[:10]
                    overlaps.append(len(set(top32) & set(top16)) / 10)
            result[name]["text_top10_overlap_mean"] = round(float(np.mean(overlaps)), 4)
            result[name]["text_top10_overlap_min"] = round(float(np.min(overlaps)), 4)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
