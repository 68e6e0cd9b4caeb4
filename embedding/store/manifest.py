"""Input manifests: finding the Parquet files, checking their columns, and cutting them into units.

A unit is a fixed slice of one manifest file (a row range). Its id is derived from the file's URI, a digest of
its content and the row range: the same bytes give the same units on every rerun (`touch` and `cp` of the same
bytes keep every unit), and any change of content gives the file's units new ids. The content digest is the
SHA-256 of the file's bytes for local files and HTTP without an ETag, and the ETag and size on object stores.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from embedding.errors import ConfigError
from embedding.store.cache import file_sha256, sha256_stream
from embedding.store.files import filesystem, is_local, protocol_of, to_url

IMAGE_ID, TEXT_ID = "image_id", "text_id"


@dataclass(frozen=True)
class ManifestFile:
    uri: str  # with its protocol, e.g. /data/m.parquet or s3://bucket/m.parquet
    version: str  # the content digest: a changed file gets new unit ids
    num_rows: int
    schema: pa.Schema
    row_groups: tuple[int, ...] = ()  # rows per row group, in order

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.uri)

    def groups_of(self, start: int, stop: int) -> tuple[int, int]:
        """The row groups [first, last] that hold rows [start, stop)."""
        offset, first, last = 0, None, None
        for g, n in enumerate(self.row_groups):
            if offset < stop and offset + n > start:
                first = g if first is None else first
                last = g
            offset += n
        return (first or 0, last if last is not None else 0)


@dataclass(frozen=True)
class Unit:
    unit_id: str
    file: ManifestFile
    start: int  # first row, inclusive
    stop: int  # last row, exclusive

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


def options_for(uri: str, storage_options: dict[str, dict]) -> dict:
    """The fsspec options of a URI's protocol (input.storage_options is keyed by protocol)."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    return storage_options.get(protocol, {})


def _content_version(fs: fsspec.AbstractFileSystem, info: dict) -> str:
    if is_local(fs):
        return "sha256:" + file_sha256(info["name"])
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:  # object stores (and HTTP servers that send one) name the content by its ETag
        return f"etag:{str(etag).strip(chr(34))}:{info.get('size')}"
    with fs.open(info["name"], "rb") as f:
        return "sha256:" + sha256_stream(f.read)


def _matches(fs: fsspec.AbstractFileSystem, path: str, pattern: str) -> list[str]:
    if any(c in path for c in "*?["):
        return sorted(fs.glob(path))
    if protocol_of(fs) in ("http", "https"):
        # fsspec's HTTP filesystem lists the links of an index page (a URL ending in "/"); a file is itself.
        if pattern.endswith("/"):
            return sorted({p for p in fs.ls(pattern, detail=False) if p.endswith(".parquet")})
        return [path]
    if fs.isdir(path):
        return sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    return [path]


Listing = list[tuple[fsspec.AbstractFileSystem, dict]]


def list_manifest(patterns: list[str], storage_options: dict[str, dict]) -> Listing:
    """The files that the manifest's paths, folders and globs name, in a stable order. Raises ConfigError.

    Only lists (no file is opened), so a missing manifest is found before anything slow starts.
    """
    if not patterns:
        raise ConfigError("input.manifest is empty: give a Parquet file, folder, glob or URL")
    listing: Listing = []
    for pattern in patterns:
        fs, path = filesystem(pattern, options_for(pattern, storage_options))
        try:
            infos = [fs.info(p) for p in _matches(fs, path, pattern)]
        except FileNotFoundError:
            infos = []
        except Exception as exc:  # credentials, network: say which manifest could not be listed
            raise ConfigError(f"input.manifest: cannot list {pattern}: {type(exc).__name__}: {exc}") from exc
        if not infos:
            raise ConfigError(f"input.manifest: no file matches {pattern}")
        listing.extend((fs, info) for info in infos)
    return listing


def find_files(
    patterns: list[str], storage_options: dict[str, dict], listing: Listing | None = None
) -> list[ManifestFile]:
    """The manifest's Parquet files with their row groups and content versions. Raises ConfigError."""
    files: list[ManifestFile] = []
    for fs, info in listing if listing is not None else list_manifest(patterns, storage_options):
        name = info["name"]
        uri = name if "://" in name else to_url(fs, name)
        try:
            with fs.open(name, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            groups = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            version = _content_version(fs, info)
        except Exception as exc:
            raise ConfigError(f"input.manifest: {uri} is not a readable Parquet file: {exc}") from exc
        files.append(ManifestFile(uri, version, meta.num_rows, meta.schema.to_arrow_schema(), groups))
    uris = [f.uri for f in files]
    if len(set(uris)) < len(uris):
        twice = sorted({u for u in uris if uris.count(u) > 1})
        raise ConfigError(f"input.manifest names the same file more than once: {', '.join(twice)}")
    return files


_STRINGS = (pa.types.is_string, pa.types.is_large_string)
_COLUMN_TYPES = {
    IMAGE_ID: ("a string or an integer", (*_STRINGS, pa.types.is_integer)),
    TEXT_ID: ("a string or an integer", (*_STRINGS, pa.types.is_integer)),
    "uri": ("a string", _STRINGS),
    "text": ("a string", _STRINGS),
    "image": ("binary", (pa.types.is_binary, pa.types.is_large_binary)),
}


def check_columns(files: list[ManifestFile]) -> None:
    """Refuse, at start, manifest columns whose type the job cannot read (ConfigError naming both)."""
    for f in files:
        for name, (wanted, checks) in _COLUMN_TYPES.items():
            if name not in f.schema.names:
                continue
            kind = f.schema.field(name).type
            value = kind.value_type if pa.types.is_dictionary(kind) else kind
            if not any(check(value) for check in checks):
                raise ConfigError(f"manifest {f.uri}: column '{name}' is {kind}; it must be {wanted}")


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
    check_columns(files)
    return kind


def unit_id(uri: str, version: str, start: int, stop: int) -> str:
    return hashlib.sha256(f"{uri}\n{version}\n{start}\n{stop}".encode()).hexdigest()[:20]


def unit_id_of(f: ManifestFile, start: int, stop: int) -> str:
    return unit_id(f.uri, f.version, start, stop)


# The largest default unit. The driver's cost is per unit (about 30-50 ms of Ray Data bookkeeping and a
# commit), so large files need large units to keep it near 0.05 ms a row; a decode task holds its unit's
# pixels (1,024 rows of 224 x 224 px: 154 MB), which is what bounds it (docs/benchmarks.md, driver).
DEFAULT_MAX_UNIT_ROWS = 1024


def unit_size(num_rows: int, unit_rows: int | None) -> int:
    """Rows per unit of a file: `input.unit_rows`, or by default an eighth of the file (at least 16 rows, at
    most DEFAULT_MAX_UNIT_ROWS), so that a few hundred rows still keep every CPU busy and a large file is
    cut into units as large as memory allows. The size depends on the file's row count alone, so the same
    file always gets the same units."""
    if unit_rows:
        return unit_rows
    return max(16, min(DEFAULT_MAX_UNIT_ROWS, math.ceil(num_rows / 8)))


def plan_units(
    files: list[ManifestFile], unit_rows: int | None, markers: Mapping[str, Any] | None = None
) -> list[Unit]:
    """Each file cut into units. A file with committed units keeps the size it was committed with (a changed
    `input.unit_rows`, or default, applies to files not started yet), so a resumed run never rewrites them:
    the size is the stop of the file's first unit, when that unit's id says it is this file's content."""
    first_stops: dict[str, list[int]] = {}
    for marker in (markers or {}).values():  # embedding.store.partition.Marker
        if marker.body.get("start") == 0:
            first_stops.setdefault(marker.body.get("source_file"), []).append(marker.body.get("stop"))
    ids = set(markers or ())
    units = []
    for f in files:
        committed = [s for s in first_stops.get(f.uri, []) if unit_id_of(f, 0, s) in ids]
        size = committed[0] if committed else unit_size(f.num_rows, unit_rows)
        for start in range(0, f.num_rows, size):
            stop = min(start + size, f.num_rows)
            units.append(Unit(unit_id_of(f, start, stop), f, start, stop))
    return units


def open_parquet(uri: str, storage_options: dict[str, dict]) -> pq.ParquetFile:
    fs, path = filesystem(uri, options_for(uri, storage_options))
    return pq.ParquetFile(fs.open(path, "rb"))


def read_rows(
    uri: str, start: int, stop: int, columns: list[str], storage_options: dict[str, dict]
) -> pa.Table:
    """Rows [start, stop) of a manifest file, reading each row group that holds them once."""
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
    assert first is not None  # set with the first group
    table = parquet.read_row_groups(groups, columns=columns)
    return table.slice(start - first, stop - start)


def read_ids(file: ManifestFile, column: str, storage_options: dict[str, dict]) -> pa.Array:
    """The id column of a manifest file as strings (integers are cast)."""
    table = open_parquet(file.uri, storage_options).read(columns=[column])
    return table.column(column).cast(pa.string()).combine_chunks()


def resolve_uri(uri: str, manifest_folder: str) -> str:
    """Relative URIs in a manifest are relative to the manifest's own folder (local or remote)."""
    if "://" in uri or uri.startswith("/"):
        return uri
    joined = posixpath.join(manifest_folder, uri)
    return joined if "://" in manifest_folder else posixpath.normpath(joined)
