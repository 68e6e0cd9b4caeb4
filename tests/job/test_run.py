"""The embedding job end to end on one shared local Ray, with the demo model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from embedding.demo.captions import query
from embedding.errors import ErrorCode
from embedding.job.run import run
from embedding.models.loading import load_model
from tests import images_factory as f

pytestmark = pytest.mark.integration

ON_RAY = {"executor": "ray"}  # the whole job through the Ray Data plan

GOOD_KINDS = ["cmyk.jpg", "grey16.png", "palette_alpha.png", "animated.gif", "exif_rotated.jpg", "photo.webp"]


def bad_and_odd_manifest(folder: Path, sample_dir: Path) -> tuple[Path, dict[str, str | None]]:
    """A manifest mixing good sample images with every kind of bad row; returns it and id -> expected code."""
    sample = pq.read_table(sample_dir / "manifest.parquet").slice(0, 24)
    ids = sample.column("image_id").to_pylist()
    uris = [str(sample_dir / u) for u in sample.column("uri").to_pylist()]
    expected: dict[str, str | None] = dict.fromkeys(ids)
    image = f.shape_image("green", "square", side=180)
    files = {
        "zero.jpg": (b"", ErrorCode.INVALID_IMAGE_FORMAT),
        "truncated.jpg": (f.jpeg_bytes(f.shape_image(side=500))[:2000], ErrorCode.INVALID_IMAGE_FORMAT),
        "text.jpg": (b"just some text\n" * 10, ErrorCode.INVALID_IMAGE_FORMAT),
        "tiny.png": (f.png_bytes(Image.new("RGB", (5, 5))), ErrorCode.INVALID_IMAGE_DIMENSION),
        "long.png": (f.png_bytes(Image.new("RGB", (16001, 12))), ErrorCode.INVALID_IMAGE_DIMENSION),
        "huge.jpg": (np.random.default_rng(0).bytes(21 * 1024 * 1024), ErrorCode.INVALID_IMAGE_SIZE),
        "cmyk.jpg": (f.cmyk_jpeg(image), None),
        "grey16.png": (f.png16(image), None),
        "palette_alpha.png": (f.palette_png_with_transparency(image), None),
        "animated.gif": (f.animated_gif([image, f.shape_image("red", "star", side=180)]), None),
        "exif_rotated.jpg": (f.exif_rotated_jpeg(image), None),
        "photo.webp": (f.webp(image), None),
    }
    for name, (data, code) in files.items():
        ids.append(name)
        uris.append(f.write(folder, name, data))
        expected[name] = code
    extra = [
        ("missing", str(folder / "missing.jpg"), ErrorCode.NOT_FOUND),
        ("ftp", "ftp://example.com/a.jpg", ErrorCode.INVALID_MANIFEST_ROW),
    ]
    for image_id, uri, code in extra:
        ids.append(image_id)
        uris.append(uri)
        expected[image_id] = code
    ids += [None, ids[0]]  # a null id and a repeated id
    uris += [uris[1], uris[2]]
    images = [None] * len(ids)
    ids.append("inline")
    uris.append(None)
    images.append(f.sample_file(3))
    expected["inline"] = None
    table = pa.table({"image_id": ids, "uri": uris, "image": pa.array(images, pa.binary())})
    path = folder / "mixed.parquet"
    pq.write_table(table, path)
    return path, expected


def read_outputs(root: Path, table: str, version: str = "demo") -> pd.DataFrame:
    return pq.read_table(root / table / f"model_version={version}").to_pandas()


def test_nothing_lost_and_every_code_right(tmp_path: Path, sample_dir: Path, make_config) -> None:
    manifest, expected = bad_and_odd_manifest(tmp_path, sample_dir)
    cfg = make_config(str(manifest), run=ON_RAY)
    summary = run(cfg)
    root = Path(cfg.output.root)
    emb, err = read_outputs(root, "embeddings"), read_outputs(root, "errors")
    rows_in = pq.read_metadata(manifest).num_rows
    assert len(emb) + len(err) == rows_in == summary["rows"]["in"]
    # each manifest row exactly once: (source_file, row_index) of errors plus embedded ids
    assert not err.duplicated(["source_file", "row_index"]).any()
    assert emb["image_id"].is_unique
    codes = dict(zip(err["image_id"], err["error_code"], strict=False))
    for image_id, code in expected.items():
        if code is None:
            assert image_id in set(emb["image_id"]), f"{image_id} should be embedded: {codes.get(image_id)}"
        else:
            assert codes.get(image_id) == code, f"{image_id}: {codes.get(image_id)} != {code}"
    null_rows = err[err["image_id"].isna()]
    assert list(null_rows["error_code"]) == [ErrorCode.INVALID_MANIFEST_ROW]
    dup = err[err["error_code"] == ErrorCode.DUPLICATE_ID]
    assert len(dup) == 1 and dup["row_index"].iloc[0] == rows_in - 2  # the repeat, not the first occurrence
    assert dup["image_id"].iloc[0] in set(emb["image_id"])
    assert summary["rows"]["failed_by_code"][ErrorCode.DUPLICATE_ID] == 1
    vectors = np.stack(emb["embedding"].to_numpy())
    assert vectors.shape[1] == 1024 and np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_parity_with_open_clip(tmp_path: Path, sample_dir: Path, make_config) -> None:
    cfg = make_config(str(sample_dir / "manifest.parquet"), run=ON_RAY)
    run(cfg)
    emb = read_outputs(Path(cfg.output.root), "embeddings").set_index("image_id")
    loaded = load_model("demo", device="cpu")
    transform = open_clip.image_transform(
        loaded.preprocess.size[0], is_train=False, mean=loaded.preprocess.mean, std=loaded.preprocess.std
    )
    manifest = pq.read_table(sample_dir / "manifest.parquet").to_pandas()
    batch = torch.stack([transform(Image.open(sample_dir / uri)) for uri in manifest["uri"]])
    with torch.no_grad():
        direct = loaded.model.encode_image(batch).float()
    direct = (direct / direct.norm(dim=-1, keepdim=True)).numpy()
    ours = np.stack(emb.loc[manifest["image_id"], "embedding"].to_numpy())
    cosine = (direct * ours).sum(axis=1)
    assert cosine.min() >= 0.999, (
        f"lowest cosine {cosine.min():.5f} for {manifest['image_id'][cosine.argmin()]}"
    )


def test_semantics_through_the_whole_job(tmp_path: Path, sample_dir: Path, make_config) -> None:
    cfg = make_config(str(sample_dir / "manifest.parquet"), run=ON_RAY)
    run(cfg)
    texts = tmp_path / "queries.parquet"
    pq.write_table(
        pa.table(
            {
                "text_id": ["q-red-circle", "q-empty", "q-long"],
                "text": [query("red", "circle"), "", " ".join(["word"] * 71)],
            }
        ),
        texts,
    )
    text_cfg = make_config(str(texts), run=ON_RAY)
    summary = run(text_cfg)
    root = Path(cfg.output.root)
    assert summary["kind"] == "text" and summary["rows"]["failed_by_code"] == {ErrorCode.INVALID_TEXT: 2}
    text_emb = read_outputs(root, "text_embeddings").set_index("text_id")
    text_err = read_outputs(root, "text_errors")
    assert sorted(text_err["text_id"]) == ["q-empty", "q-long"]
    images = read_outputs(root, "embeddings")
    manifest = pq.read_table(sample_dir / "manifest.parquet").to_pandas().set_index("image_id")
    vectors = np.stack(images["embedding"].to_numpy())
    scores = vectors @ text_emb.loc["q-red-circle", "embedding"]
    top = images["image_id"].to_numpy()[np.argsort(-scores)[:10]]
    hits = [(manifest.loc[i, "colour"], manifest.loc[i, "shape"]) == ("red", "circle") for i in top]
    assert np.mean(hits) >= 0.8


def test_output_schema_types_and_metadata(tmp_path: Path, sample_dir: Path, make_config) -> None:
    cfg = make_config(str(sample_dir / "manifest.parquet"), output={"embedding_dtype": "float32"}, run=ON_RAY)
    run(cfg)
    root = Path(cfg.output.root)
    part = sorted((root / "embeddings" / "model_version=demo").glob("part-*.parquet"))[0]
    schema = pq.read_schema(part)
    assert schema.field("image_id").type == pa.string()
    assert schema.field("embedding").type == pa.list_(pa.field("element", pa.float32(), nullable=False), 1024)
    assert schema.field("model_version").type == pa.dictionary(pa.int32(), pa.string())
    assert [schema.field(c).type for c in ("uri", "width", "height", "content_sha256")] == [
        pa.string(),
        pa.int32(),
        pa.int32(),
        pa.string(),
    ]
    assert schema.field("caption").type == pa.string() and schema.field("tags").type == pa.list_(pa.string())
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    for key in ("model_version", "architecture", "weights_sha256", "preprocess", "package_version", "run_id"):
        assert meta[key], key
    assert meta["model_version"] == "demo"
    assert set(json.loads(meta["preprocess"])) >= {"size", "mean", "std", "interpolation", "resize_mode"}
    errors_schema = pq.read_schema(sorted((root / "errors" / "model_version=demo").glob("*.parquet"))[0])
    assert errors_schema.names == [
        "image_id",
        "uri",
        "error_code",
        "error_message",
        "stage",
        "attempts",
        "source_file",
        "row_index",
    ]
    df = pd.read_parquet(root / "embeddings")
    assert set(df["model_version"].astype(str)) == {"demo"} and len(df) == 384
    summary_files = list((root / "runs").glob("*/summary.json"))
    config_files = list((root / "runs").glob("*/config.yaml"))
    assert len(summary_files) == 1 and len(config_files) == 1
    summary = json.loads(summary_files[0].read_text())
    stages = summary["stages"]
    assert stages["fetch_decode"]["rows"] == stages["encode"]["rows"] == 384
    assert all(stages[s]["rows_per_s"] > 0 for s in ("fetch_decode", "encode", "write"))
    assert stages["encode"]["wait_s"] >= 0 and summary["rows_per_s"] > 0
    assert set(summary["versions"]) >= {"ray", "torch", "open_clip_torch"}
    phases = summary["phases_s"]  # where a run's time went, start-up included, in order
    assert all(v >= 0 for v in phases.values())
    assert abs(sum(v for k, v in phases.items() if k != "total") - phases["total"]) < 0.01
    assert 0 < summary["first_batch_encoded_s"] <= phases["total"]
