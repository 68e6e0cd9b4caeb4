"""The index on disk: `index.json` and the shard files it names, written and checked.

    <root>/index/model_version=<v>/index.json
    <root>/index/model_version=<v>/build-<id>/shard-000.faiss          the FAISS index of the shard
    <root>/index/model_version=<v>/build-<id>/shard-000.vectors.npy    float16/32 vectors for exact re-ranking
    <root>/index/model_version=<v>/build-<id>/shard-000.meta.parquet   row -> image_id, uri, carried columns

Paths in index.json are relative to its folder, so the folder can be copied to another machine. A rebuild
writes a new build folder and then index.json (one object: the atomic switch), then removes old builds.
Loading checks the files' sizes against index.json (cheap, keeps memory-mapping cheap); `verify` checks
their SHA-256 too.

An index folder is untrusted input (someone else may have written it): every path in index.json must be
relative and stay inside the folder (no absolute paths, no "..", no symlinks leading out), or the index is
refused before any file is opened. A remote index is downloaded into a per-user cache folder that only its
owner can enter ($XDG_CACHE_HOME/embedding/index or ~/.cache/embedding/index), and every downloaded file is
verified against its SHA-256 in index.json before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embedding.errors import ConfigError
from embedding.store.files import filesystem, write_atomic

INDEX_FILE = "index.json"
FORMAT_VERSION = 2


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def safe_relative(path: str) -> str:
    """`path` if it is a relative path that stays inside its folder; raises ValueError otherwise."""
    parts = path.split("/")
    if (
        not path
        or "\\" in path
        or "\0" in path
        or path.startswith("/")
        or re.match(r"^[A-Za-z]:", path)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(f"{path!r} is not a plain relative path inside the index folder")
    return path


class Span(BaseModel):
    """Rows [start, start + rows) of a shard came from one committed unit's file."""

    model_config = ConfigDict(extra="forbid")
    unit: str
    start: int = Field(ge=0)
    rows: int = Field(ge=0)


class ShardFiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: int
    files: dict[str, str]  # role (index, vectors, meta) -> path relative to the index folder
    bytes: dict[str, int]
    sha256: dict[str, str]
    spans: list[Span] = Field(default_factory=list)  # which unit each row came from, in order
    retired: list[str] = Field(default_factory=list)  # units whose rows search skips (tombstones)
    delta: bool = False  # added by an update (not by a build or a compaction)

    def retired_rows(self) -> int:
        gone = set(self.retired)
        return sum(span.rows for span in self.spans if span.unit in gone)

    @field_validator("files")
    @classmethod
    def _inside(cls, files: dict[str, str]) -> dict[str, str]:
        for path in files.values():
            safe_relative(path)
        return files

    @model_validator(mode="after")
    def _complete(self) -> ShardFiles:
        roles = set(self.files)
        if roles != set(self.bytes) or roles != set(self.sha256):
            raise ValueError("files, bytes and sha256 must name the same roles")
        if not all(_SHA256.match(v) for v in self.sha256.values()):
            raise ValueError("sha256 values must be 64 lowercase hex digits")
        if any(n < 0 for n in self.bytes.values()) or self.rows < 0:
            raise ValueError("sizes and row counts cannot be negative")
        if self.spans and sum(span.rows for span in self.spans) != self.rows:
            raise ValueError("the spans must cover the shard's rows")
        if any(a.start + a.rows != b.start for a, b in zip(self.spans, self.spans[1:], strict=False)):
            raise ValueError("the spans must follow each other from row 0")
        if self.spans and self.spans[0].start != 0:
            raise ValueError("the spans must start at row 0")
        return self


class Change(BaseModel):
    """What produced an index.json: a build (trained anew), an update, or a compaction, and why."""

    model_config = ConfigDict(extra="forbid")
    action: str  # build | update | compaction
    reason: str
    added_units: int = 0
    retired_units: int = 0
    seconds: float = 0.0


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
    identity: dict[str, Any]  # the model that made the vectors (embedding.models.identity)
    built_at: str
    build_seconds: float
    build_id: str
    self_check: dict[str, Any]
    # The trained, empty index (quantizer, codebooks) that updates fill their delta shards from, and the
    # rows it was trained for: a collection grown past index.retrain_growth times those is rebuilt.
    trained: ShardFiles | None = None
    trained_rows: int = 0
    built_recall: float | None = None  # the worst self-check recall of the last build or compaction
    change: Change | None = None

    def retired_rows(self) -> int:
        return sum(shard.retired_rows() for shard in self.shards)

    def delta_rows(self) -> int:
        return sum(shard.rows - shard.retired_rows() for shard in self.shards if shard.delta)

    def all_files(self) -> list[ShardFiles]:
        """Every file group index.json names: the shards, and the trained index."""
        return [*self.shards, *([self.trained] if self.trained else [])]


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
    fs, base = filesystem(folder, storage_options)
    write_atomic(fs, posixpath.join(base, INDEX_FILE), manifest.model_dump_json(indent=1))


def read_manifest(folder: str, storage_options: dict) -> IndexManifest:
    fs, base = filesystem(folder, storage_options)
    path = posixpath.join(base, INDEX_FILE)
    if not fs.exists(path):
        raise ConfigError(
            f"no index at {folder}: build it with `embedding index CONFIG` (or enable index in run)"
        )
    with fs.open(path, "r") as f:
        text = f.read()
    try:
        return IndexManifest.model_validate(json.loads(text))
    except (ValidationError, ValueError) as exc:
        problems = (
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        raise ConfigError(
            f"the index.json of {folder} is invalid or tampered with ({problems}); refusing to load it: "
            "rebuild the index with `embedding index`"
        ) from None


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return protocol in ("file", "local")


def cache_root() -> Path:
    """The per-user folder for downloaded indexes: $XDG_CACHE_HOME/embedding/index, ~/.cache/... else."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embedding" / "index"


def _private_dir(path: Path) -> None:
    """Create the cache entry `path` (.../embedding/index/<entry>) with mode 0700, checking each level
    from .../embedding down before going into it: a level that is a symlink or another user's is refused
    before anything is created beneath it."""
    top = path.parent.parent
    top.parent.mkdir(parents=True, exist_ok=True)  # $XDG_CACHE_HOME or ~/.cache
    for folder in (top, path.parent, path):
        folder.mkdir(mode=0o700, exist_ok=True)  # another process may make it meanwhile: checked below
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigError(f"index cache folder {folder} is not a folder of this user: remove it")
        if info.st_mode & 0o077:
            os.chmod(folder, 0o700)


def _inside(folder: str, rel: str) -> str:
    """folder/rel, refusing a path that resolves outside the folder (a symlink leading out, say)."""
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(folder, safe_relative(rel)))
    if os.path.commonpath([root, path]) != root:
        raise ConfigError(f"index file {rel} leads outside the index folder {folder}; refusing the index")
    return path


def _download(fs: fsspec.AbstractFileSystem, source: str, target: Path, size: int, sha256: str) -> None:
    """Copy one file into the cache, hashing as it streams; keep it only when the SHA-256 matches."""
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    digest, copied = hashlib.sha256(), 0
    try:
        with fs.open(source, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(min(1 << 20, size + 1 - copied)):
                digest.update(chunk)
                dst.write(chunk)
                copied += len(chunk)
                if copied > size:
                    break  # longer than index.json says: do not let it fill the disk
        if copied != size or digest.hexdigest() != sha256:
            raise ConfigError(
                f"downloaded index file {source} does not match the size and SHA-256 in its index.json: "
                "the remote index is corrupt or was tampered with; rebuild it with `embedding index`"
            )
        os.replace(partial, target)
        target.with_name(target.name + ".sha256").write_text(sha256)
    finally:
        partial.unlink(missing_ok=True)


def local_folder(folder: str, manifest: IndexManifest, storage_options: dict) -> str:
    """A local folder holding the index files: the folder itself, or a verified cached copy of a remote one.

    Cached files are verified by SHA-256 when downloaded; a marker beside each remembers the digest, so a
    later load reuses the file without hashing it again (the cache folder is the user's own, mode 0700).
    """
    fs, base = filesystem(folder, storage_options)
    if _is_local(fs):
        return base
    cache = cache_root() / hashlib.sha256(folder.encode()).hexdigest()[:32]
    _private_dir(cache)
    wanted = set()
    for shard in manifest.shards:
        for role, rel in shard.files.items():
            wanted.add(rel.split("/")[0])
            local = Path(_inside(str(cache), rel))
            marker = local.with_name(local.name + ".sha256")
            fresh = (
                local.is_file()
                and local.stat().st_size == shard.bytes[role]
                and marker.is_file()
                and marker.read_text().strip() == shard.sha256[role]
            )
            if not fresh:
                local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _download(fs, posixpath.join(base, rel), local, shard.bytes[role], shard.sha256[role])
    for entry in cache.iterdir():  # builds that index.json no longer names
        if entry.name not in wanted and entry.name.startswith("build-"):
            shutil.rmtree(entry, ignore_errors=True)
    return str(cache)


def check_files(folder: str, manifest: IndexManifest, checksums: bool) -> None:
    """Refuse an index whose files are missing, of the wrong size, or (with checksums) corrupt."""
    for number, shard in enumerate(manifest.shards):
        for role, rel in shard.files.items():
            path = _inside(folder, rel)
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
