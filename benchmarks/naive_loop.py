"""The naive baseline: one process opens each image, applies the model's own open_clip transform, encodes
in batches of 64 and writes Parquet. Used by benchmarks/pipeline.py and benchmarks/memory.py.

    python benchmarks/naive_loop.py MANIFEST OUT.parquet [--version demo] [--config CONFIG]
"""

from __future__ import annotations

import argparse

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from embedding.config_file import load_config
from embedding.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("out")
    parser.add_argument("--config", help="a config that defines the model version (its model section)")
    parser.add_argument("--version", default="demo")
    args = parser.parse_args()
    cfg = load_config(args.config) if args.config else None
    loaded = load_model(args.version, cfg.model if cfg else None, device="cpu")
    prep = loaded.preprocess
    transform = open_clip.image_transform(
        prep.size[0],
        is_train=False,
        mean=prep.mean,
        std=prep.std,
        interpolation=prep.interpolation,
        resize_mode=prep.resize_mode,
    )
    table = pq.read_table(args.manifest)
    ids, uris = table.column("image_id").to_pylist(), table.column("uri").to_pylist()
    vectors = []
    with torch.inference_mode():
        for start in range(0, len(uris), 64):
            batch = torch.stack([transform(Image.open(u)) for u in uris[start : start + 64]])
            features = loaded.model.encode_image(batch).float()
            vectors.append((features / features.norm(dim=-1, keepdim=True)).numpy())
    flat = np.concatenate(vectors)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    pq.write_table(pa.table({"image_id": ids, "embedding": column}), args.out)


if __name__ == "__main__":
    main()
