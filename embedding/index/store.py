"""The index on disk: `index.json` and the shard files it names, written and checked.

    <root>/index/model_version=<v>/index.json
    <root>/index/model_version=<v>/build-<id>/shard-000.faiss          the FAISS index of the shard
    <root>/index/model_version=<v>/build-<id>/shard-000.vectors.npy    float16/32 vectors for exact re-ranking
    <root>/index/model_version=<v>/build-<id>/shard-000.meta.parquet   row -> image_id, uri, carried columns

Paths in index.json are relative to its folder, so the folder can be copied to another machine. A rebuild
writes a new build folder and then index.json (one object: the atomic switch), then removes old builds.
Loading checks the files' sizes against index.json (cheap, keeps memory-mapping cheap); `verify` checks
their SHA-256 too.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from pydantic import BaseModel, ConfigDict, ValidationError

from embedding.errors import ConfigError
from embedding.storage import write_atomic

INDEX_FILE = "index.json"
FORMAT_VERSION = 2


class ShardFiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: int
    files: dict[str, str]  # role (index, vectors, meta) -> path relative to the index folder
    bytes: dict[str, int]
    sha256: dict[str, str]


class IndexManifest(BaseModel):
    """The content of index.json."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    format: int = FORMAT_VERSION
    model_version: str
    kind: str
    factory: str
    dim: int
    metric: str = "inner_product"
    rows: int
    shards: list[ShardFiles]
    rerank: int
    rerank_dtype: str
    nprobe: int
    ef_search: int
    metadata_columns: list[str]
    sources: list[str]  # the embedding files (relative to the output root) it was built from
    units: dict[str, str]  # unit id -> SHA-256 of its commit marker: exactly what the index holds
    identity: dict[str, Any]  # the model that made the vectors (embedding.identity)
    built_at: str
    build_seconds: float
    build_id: str
    self_check: dict[str, Any]


def index_dir(root: str, version: str) -> str:
    return posixpath.join(root.rstrip("/"), "index", f"model_version={version}")


def sha256_file(path: str, fs: fsspec.AbstractFileSystem | None = None) -> str:
    digest = hashlib.sha256()
    opener = fs.open if fs is not None else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str, manifest: IndexManifest, storage_options: dict) -> None:
    """Write index.json in one piece (rename on local disks, a single PUT on object stores)."""
    fs, base = url_to_fs(folder, **storage_options)
    write_atomic(fs, posixpath.join(base, INDEX_FILE), manifest.model_dump_json(indent=1))


def read_manifest(folder: str, storage_options: dict) -> IndexManifest:
    fs, base = url_to_fs(folder, **storage_options)
    path = posixpath.join(base, INDEX_FILE)
    if not fs.exists(path):
        raise ConfigError(
            f"no index at {folder}: build it with `embedding index CONFIG` (or enable index in run)"
        )
    with fs.open(path, "r") as f:
        raw = f.read()
    try:
        return IndexManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"{folder}/{INDEX_FILE} is not an index of this version of the package ({exc.error_count()} "
            "problems): rebuild it with `embedding index CONFIG`"
        ) from None


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return protocol in ("file", "local")


def local_folder(folder: str, manifest: IndexManifest, storage_options: dict) -> str:
    """A local folder holding the index files: the folder itself, or a cached copy of a remote one."""
    fs, base = url_to_fs(folder, **storage_options)
    if _is_local(fs):
        return base
    cache = Path(tempfile.gettempdir()) / "embedding-index" / hashlib.sha256(folder.encode()).hexdigest()[:16]
    for shard in manifest.shards:
        for role, rel in shard.files.items():
            local = cache / rel
            if not local.exists() or local.stat().st_size != shard.bytes[role]:
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get(posixpath.join(base, rel), str(local))
    return str(cache)


def check_files(folder: str, manifest: IndexManifest, checksums: bool) -> None:
    """Refuse an index whose files are missing, of the wrong size, or (with checksums) corrupt."""
    for number, shard in enumerate(manifest.shards):
        for role, rel in shard.files.items():
            path = os.path.join(folder, rel)
            if not os.path.exists(path):
                raise ConfigError(f"index shard {number}: {role} file {rel} is missing from {folder}")
            size = os.path.getsize(path)
            if size != shard.bytes[role]:
                raise ConfigError(
                    f"index shard {number}: {rel} has {size} bytes, index.json says {shard.bytes[role]}; "
                    "the file is corrupt or from another build: rebuild with `embedding index`"
                )
            if checksums and sha256_file(path) != shard.sha256[role]:
                raise ConfigError(
                    f"index shard {number}: {rel} does not match its SHA-256 in index.json; the file is "
                    "corrupt: rebuild with `embedding index`"
                )
