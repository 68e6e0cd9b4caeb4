"""Thumbnails: size, orientation, placeholders, inline bytes from the manifest, and the cache's size cap."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedding.config import Config
from embedding.errors import EmbeddingError, ErrorCode
from embedding.media.imagecheck import ImageLimits
from embedding.service.thumbnails import Thumbnails, cache_folder, inline_image, make_thumbnail


def jpeg(width: int, height: int, seed: int = 0, exif_orientation: int | None = None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.size


def test_thumbnails_keep_the_aspect_and_the_orientation() -> None:
    limits = ImageLimits()
    assert size_of(make_thumbnail(jpeg(1200, 600), 256, limits)) == (256, 128)
    assert size_of(make_thumbnail(jpeg(100, 60), 256, limits)) == (100, 60)  # never enlarged
    assert size_of(make_thumbnail(jpeg(1200, 600, exif_orientation=6), 256, limits)) == (128, 256)
    for data, code in (
        (b"junk", ErrorCode.INVALID_IMAGE_FORMAT),
        (jpeg(5, 40), ErrorCode.INVALID_IMAGE_DIMENSION),
    ):
        with pytest.raises(EmbeddingError) as info:
            make_thumbnail(data, 256, limits)
        assert info.value.code == code


def config(tmp_path: Path, **service: object) -> Config:
    return Config.model_validate(
        {
            "input": {"manifest": str(tmp_path / "m.parquet")},
            "output": {"root": str(tmp_path / "out")},
            "service": service,
        }
    )


def test_sources_placeholders_and_inline_bytes(tmp_path: Path) -> None:
    pictures = {f"id-{i}": jpeg(300, 200, seed=i) for i in range(6)}
    table = pa.table({"image_id": list(pictures), "image": list(pictures.values())})
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=2)  # the row is looked up by row group
    assert inline_image(config(tmp_path), "id-3") == pictures["id-3"]
    assert inline_image(config(tmp_path), "id-9") is None
    on_disk = tmp_path / "a.jpg"
    on_disk.write_bytes(pictures["id-0"])
    thumbnails = Thumbnails(config(tmp_path))
    assert thumbnails.folder == tmp_path / "out" / "_cache" / "thumbnails" == cache_folder(config(tmp_path))
    made, problem = thumbnails.get("demo", {"image_id": "a", "uri": str(on_disk)})
    assert problem is None and size_of(made) == (256, 171)
    on_disk.unlink()  # cached: served without the source
    assert thumbnails.get("demo", {"image_id": "a", "uri": str(on_disk)}) == (made, None)
    inline, problem = thumbnails.get("demo", {"image_id": "id-4", "uri": None})
    assert problem is None and size_of(inline) == (256, 171)
    for record, code in (
        ({"image_id": "b", "uri": str(tmp_path / "missing.jpg")}, "NotFound"),
        ({"image_id": "id-9", "uri": None}, "NotFound"),
        ({"image_id": "c", "uri": "ftp://host/c.jpg"}, "InvalidManifestRow"),
    ):
        data, problem = thumbnails.get("demo", record)
        assert problem == code and data == thumbnails.placeholder


def test_the_cache_stays_under_its_cap_least_recently_used_first(tmp_path: Path) -> None:
    sources = []
    for i in range(40):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(jpeg(600, 600, seed=i))  # noise: about 60 KB per thumbnail
        sources.append({"image_id": str(i), "uri": str(path)})
    thumbnails = Thumbnails(config(tmp_path, thumbnail_cache_mb=1))
    cap = 1024 * 1024
    thumbnails.get("demo", sources[0])
    for record in sources[1:]:
        thumbnails.get("demo", sources[0])  # used again and again: kept
        thumbnails.get("demo", record)
        used = sum(p.stat().st_size for p in thumbnails.folder.rglob("*.jpg"))
        assert used <= cap
    kept = list(thumbnails.folder.rglob("*.jpg"))
    assert 10 < len(kept) < 40
    Path(sources[0]["uri"]).unlink()
    assert thumbnails.get("demo", sources[0])[1] is None  # still cached although its source is gone
