"""Thumbnails of indexed images: JPEGs of at most `service.thumbnail_px` made from the image's own source.

The source is the indexed row's `uri`, read through the job's source layer and limits (never a path from
the request), or, for rows that came with inline bytes, the `image` column of the config's manifest.
Thumbnails are cached under `<output.root>/_cache/thumbnails/` (safe to delete) and the cache is trimmed to
`service.thumbnail_cache_mb`, least recently used first. A source that is missing or unreadable gets a
placeholder image, never a broken one; placeholders are not cached, so a source that comes back shows.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from fsspec.core import url_to_fs
from PIL import Image, ImageDraw, ImageOps

from embedding.config import Config
from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch.sources import check_size, fetch
from embedding.media.imagecheck import ImageLimits, open_image
from embedding.media.load import MediaSettings, fetch_media, video_still
from embedding.media.resize import Preprocess, to_rgb
from embedding.media.video import VideoSettings
from embedding.service.security import source_settings
from embedding.store.cache import cache_dir
from embedding.store.manifest import IMAGE_ID, find_files, open_parquet

log = logging.getLogger(__name__)

TRIM_TO = 0.9  # a trim leaves the cache at this share of its cap, so that it does not trim on every write


def make_thumbnail(data: bytes, size_px: int, limits: ImageLimits) -> bytes:
    """Image file bytes -> a JPEG whose longest side is at most `size_px` (EXIF orientation applied)."""
    image = open_image(data, limits)
    try:
        image.draft("RGB", (size_px, size_px))  # JPEG: decode at a reduced scale when it can
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image, (255, 255, 255))
        rgb.thumbnail((size_px, size_px), Image.Resampling.BICUBIC)
    except Exception as exc:  # truncated data, corrupt streams
        raise EmbeddingError(ErrorCode.INVALID_IMAGE_FORMAT, f"cannot decode image: {exc}") from exc
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=85)
    return out.getvalue()


def placeholder(size_px: int) -> bytes:
    """A neutral picture frame: what a thumbnail without a readable source shows."""
    image = Image.new("RGB", (size_px, size_px), (232, 234, 237))
    draw = ImageDraw.Draw(image)
    s = size_px
    draw.rectangle((s * 0.3, s * 0.32, s * 0.7, s * 0.68), outline=(160, 166, 173), width=max(2, s // 64))
    draw.polygon(
        [(s * 0.34, s * 0.64), (s * 0.47, s * 0.46), (s * 0.56, s * 0.58), (s * 0.66, s * 0.64)],
        fill=(160, 166, 173),
    )
    draw.ellipse((s * 0.55, s * 0.38, s * 0.63, s * 0.46), fill=(160, 166, 173))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def inline_image(cfg: Config, image_id: str) -> bytes | None:
    """The inline `image` bytes of a manifest row of the config (the trusted manifest), or None."""
    options = cfg.input.storage_options
    for file in find_files(cfg.input.manifest, options):
        if "image" not in file.schema.names or IMAGE_ID not in file.schema.names:
            continue
        parquet = open_parquet(file.uri, options)
        ids = parquet.read(columns=[IMAGE_ID]).column(IMAGE_ID)
        row = pc.index(ids, pa.scalar(image_id, ids.type)).as_py()
        if row is None or row < 0:
            continue
        start = 0  # read only the row group that holds the row, not every image of the file
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if row < start + rows:
                return parquet.read_row_group(group, columns=["image"]).column(0)[row - start].as_py()
            start += rows
    return None


def cache_folder(cfg: Config) -> Path:
    """<output.root>/_cache/thumbnails on a local root; the user's cache folder for an object store."""
    fs, base = url_to_fs(cfg.output.root, **cfg.output.storage_options)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if protocol in ("file", "local"):
        return Path(base) / "_cache" / "thumbnails"
    digest = hashlib.sha256(cfg.output.root.encode()).hexdigest()[:16]
    return cache_dir("thumbnails", digest)  # private to the user, not a predictable shared /tmp folder


class Thumbnails:
    """Makes, caches and trims thumbnails; thread-safe (the ingress calls it from worker threads)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.size_px = cfg.service.thumbnail_px
        self.cap = cfg.service.thumbnail_cache_mb * 1024 * 1024
        self.folder = cache_folder(cfg)
        self.limits = ImageLimits.from_config(cfg)
        self.placeholder = placeholder(self.size_px)
        self._lock = threading.Lock()
        self._used: int | None = None  # bytes in the cache, counted on first use

    def source(self, record: dict[str, Any]) -> bytes:
        """The indexed image's own bytes. Raises EmbeddingError (NotFound when it has no source)."""
        uri = record.get("uri")
        if uri:
            return fetch(uri, source_settings(self.cfg, "index"))[0]
        data = inline_image(self.cfg, str(record["image_id"]))
        if data is None:
            raise EmbeddingError(ErrorCode.NOT_FOUND, f"image '{record['image_id']}' has no uri or bytes")
        check_size(len(data), self.cfg.limits.max_image_bytes, "the inline image")
        return data

    def get(self, version: str, record: dict[str, Any]) -> tuple[bytes, str | None]:
        """(JPEG bytes, None) for a thumbnail, or (placeholder JPEG, the error code) without a source. A
        record of a video's frame (it has `frame_time_s`) gets the picture of the video at that time."""
        parts = [version, str(record["image_id"]), str(record.get("uri")), str(self.size_px)]
        parts.append(str(record.get("frame_index")))
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        path = self.folder / version / key[:2] / f"{key}.jpg"
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: trimmed last
            return data, None
        except FileNotFoundError:
            pass
        try:
            if record.get("frame_time_s") is not None:
                data = self._frame(record)
            else:
                data = make_thumbnail(self.source(record), self.size_px, self.limits)
        except EmbeddingError as exc:
            log.info("thumbnail of %s: placeholder (%s)", record.get("image_id"), exc)
            return self.placeholder, exc.code.value
        self._store(path, data)
        return data, None

    def _frame(self, record: dict[str, Any]) -> bytes:
        """A thumbnail of a video at its frame's time, from the indexed row's own uri (or inline bytes)."""
        settings = MediaSettings(
            source_settings(self.cfg, "index"), Preprocess(), self.limits, VideoSettings.from_config(self.cfg)
        )
        uri = record.get("uri")
        inline = None if uri else inline_image(self.cfg, str(record["image_id"]))
        still = video_still(fetch_media(uri, inline, settings), settings, float(record["frame_time_s"]))
        still.thumbnail((self.size_px, self.size_px), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        still.convert("RGB").save(out, "JPEG", quality=85)
        return out.getvalue()

    def _store(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")  # replicas share the folder
        tmp.write_bytes(data)
        os.replace(tmp, path)
        with self._lock:
            if self._used is None:
                self._used = sum(f.stat().st_size for f in self._files())
            else:
                self._used += len(data)
            if self._used > self.cap:
                self._trim()

    def _files(self) -> list[Path]:
        return [p for p in self.folder.rglob("*.jpg") if p.is_file()]

    def _trim(self) -> None:
        """Remove the least recently used thumbnails until the cache is under TRIM_TO of its cap."""
        entries = []
        for path in self._files():
            try:
                stat = path.stat()
            except FileNotFoundError:  # another replica trimmed it
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        used = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if used <= self.cap * TRIM_TO:
                break
            path.unlink(missing_ok=True)
            used -= size
        self._used = used
