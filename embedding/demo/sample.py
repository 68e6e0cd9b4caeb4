"""`embedding sample`: write synthetic images and their manifest (the manifest schema of README.md)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedding.demo import captions
from embedding.demo.synthetic import balanced_specs, encode, render

MANIFEST_NAME = "manifest.parquet"
DEFAULT_COUNT = 384

SAMPLE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("caption", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("caption_fr", pa.string()),
        ("caption_es", pa.string()),
        ("caption_de", pa.string()),
        ("colour", pa.string()),
        ("shape", pa.string()),
        ("background", pa.string()),
    ]
)


def write_sample(out_dir: str | Path, count: int = DEFAULT_COUNT, seed: int = 0) -> Path:
    """Write `count` images under OUT_DIR/images and OUT_DIR/manifest.parquet; returns the manifest path.

    URIs in the manifest are relative to the manifest's folder, so the folder can be moved or uploaded.
    """
    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"captions-{seed}")
    rows: dict[str, list] = {name: [] for name in SAMPLE_SCHEMA.names}
    for i, spec in enumerate(balanced_specs(count, seed)):
        image_id = f"s{seed}-{i:06d}"
        rel = f"images/{image_id}.{'jpg' if spec.fmt == 'jpeg' else 'png'}"
        (out / rel).write_bytes(encode(render(spec), spec))
        caps = captions.captions(spec.colour, spec.shape, spec.background, rng)
        row = {
            "image_id": image_id,
            "uri": rel,
            "caption": caps["en"],
            "tags": captions.tags(spec.colour, spec.shape, spec.background),
            "caption_fr": caps["fr"],
            "caption_es": caps["es"],
            "caption_de": caps["de"],
            "colour": spec.colour,
            "shape": spec.shape,
            "background": spec.background,
        }
        for name, value in row.items():
            rows[name].append(value)
    manifest = out / MANIFEST_NAME
    pq.write_table(pa.table(rows, schema=SAMPLE_SCHEMA), manifest)
    return manifest
