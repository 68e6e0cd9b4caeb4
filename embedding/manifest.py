"""Input manifests: finding the Parquet files, checking their columns, and cutting them into units.

A unit is a fixed slice of one manifest file (a row range). Its id is derived from the file's URI, its
size or etag, and the row range, so the same manifest gives the same units on every rerun, and a changed
file gives new ones.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedding.errors import ConfigError

IMAGE_ID, TEXT_ID = "image_id", "text_id"


@dataclass(frozen=True)
class ManifestFile:
    uri: str  # with its protocol, e.g. /data/m.parquet or s3://bucket/m.parquet
    version: str  # size and etag/mtime: a changed file gets new unit ids
    num_rows: int
    schema: pa.Schema

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.uri)


@dataclass(frozen=True)
class Unit:
    unit_id: str
    file: ManifestFile
    start: int  # first row, inclusive
    stop: int  # last row, exclusive

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def find_files(patterns: list[str], storage_options: dict[str, dict]) -> list[ManifestFile]:
    """Expand paths, folders and globs into Parquet files, in a stable order. Raises ConfigError."""
    if not patterns:
        raise ConfigError("input.manifest is empty: give a Parquet file, folder, glob or URL")
    files: list[ManifestFile] = []
    for pattern in patterns:
        protocol = pattern.split("://", 1)[0] if "://" in pattern else "file"
        fs, path = url_to_fs(pattern, **storage_options.get(protocol, {}))
        try:
            matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
            if len(matches) == 1 and fs.isdir(matches[0]):
                matches = sorted(p for p in fs.find(matches[0]) if p.endswith(".parquet"))
            infos = [fs.info(p) for p in matches]
        except FileNotFoundError:
            infos = []
        except Exception as exc:  # credentials, network: say which manifest could not be listed
            raise ConfigError(f"input.manifest: cannot list {pattern}: {type(exc).__name__}: {exc}") from exc
        if not infos:
            raise ConfigError(f"input.manifest: no file matches {pattern}")
        for info in infos:
            uri = _unstrip(fs, info["name"])
            version = f"{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('mtime') or ''}"
            try:
                with fs.open(info["name"], "rb") as f:
                    meta = pq.ParquetFile(f).metadata
                    schema = meta.schema.to_arrow_schema()
                    num_rows = meta.num_rows
            except Exception as exc:
                raise ConfigError(f"input.manifest: {uri} is not a readable Parquet file: {exc}") from exc
            files.append(ManifestFile(uri, version, num_rows, schema))
    return files


def detect_kind(files: list[ManifestFile], kind: str) -> str:
    """ "image" or "text", checking every file has the required columns. Raises ConfigError."""
    for f in files:
        names = set(f.schema.names)
        is_image = IMAGE_ID in names and ("uri" in names or "image" in names)
        is_text = TEXT_ID in names and "text" in names
        file_kind = kind if kind != "auto" else ("image" if is_image else "text" if is_text else "unknown")
        if file_kind == "image" and not is_image:
            raise ConfigError(
                f"manifest {f.uri} lacks required columns: an image manifest needs 'image_id' and 'uri' "
                f"or 'image'; it has {', '.join(f.schema.names)}"
            )
        if file_kind == "text" and not is_text:
            raise ConfigError(
                f"manifest {f.uri} lacks required columns: a text manifest needs 'text_id' and 'text'; "
                f"it has {', '.join(f.schema.names)}"
            )
        if file_kind == "unknown":
            raise ConfigError(
                f"manifest {f.uri} is neither an image manifest (image_id, uri or image) nor a text manifest "
                f"(text_id, text); it has {', '.join(f.schema.names)}"
            )
        if kind == "auto":
            kind = file_kind
    return kind


def plan_units(files: list[ManifestFile], unit_rows: int) -> list[Unit]:
    units = []
    for f in files:
        for start in range(0, f.num_rows, unit_rows):
            stop = min(start + unit_rows, f.num_rows)
            key = f"{f.uri}\n{f.version}\n{start}\n{stop}".encode()
            units.append(Unit(hashlib.sha256(key).hexdigest()[:20], f, start, stop))
    return units


def open_parquet(uri: str, storage_options: dict[str, dict]) -> pq.ParquetFile:
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    fs, path = url_to_fs(uri, **storage_options.get(protocol, {}))
    return pq.ParquetFile(fs.open(path, "rb"))


def read_rows(
    uri: str, start: int, stop: int, columns: list[str], storage_options: dict[str, dict]
) -> pa.Table:
    """Rows [start, stop) of a manifest file, reading only the row groups that hold them."""
    parquet = open_parquet(uri, storage_options)
    groups, offset, first = [], 0, None
    for g in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return parquet.schema_arrow.empty_table().select(columns)
    table = parquet.read_row_groups(groups, columns=columns)
    return table.slice(start - first, stop - start)


def read_column(file: ManifestFile, column: str, storage_options: dict[str, dict]) -> pa.ChunkedArray:
    return open_parquet(file.uri, storage_options).read(columns=[column]).column(column)


def resolve_uri(uri: str, manifest_folder: str) -> str:
    """Relative URIs in a manifest are relative to the manifest's own folder (local or remote)."""
    if "://" in uri or uri.startswith("/"):
        return uri
    joined = posixpath.join(manifest_folder, uri)
    return joined if "://" in manifest_folder else posixpath.normpath(joined)
