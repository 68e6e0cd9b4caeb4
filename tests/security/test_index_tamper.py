"""An index folder is untrusted input: its paths stay inside it, and downloads are verified (issue 11).

The "remote" index lives in fsspec's in-memory filesystem (not local to the loader, no server needed);
the cache goes to a per-test $XDG_CACHE_HOME.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import fsspec
import pytest

from embedding.errors import ConfigError
from embedding.index.search import Index
from embedding.index.store import cache_root, check_files, local_folder, read_manifest

FILES = {"build-1/shard-000.faiss": b"faiss" * 10, "build-1/shard-000.vectors.npy": b"v" * 64}
FILES["build-1/shard-000.meta.parquet"] = b"meta"


def manifest(paths: dict[str, str] | None = None, digests: dict[str, str] | None = None) -> dict:
    """index.json naming FILES (or other paths), as a build would write it."""
    roles = {
        "index": "build-1/shard-000.faiss",
        "vectors": "build-1/shard-000.vectors.npy",
        "meta": "build-1/shard-000.meta.parquet",
    }
    roles.update(paths or {})
    shard = {
        "rows": 1,
        "files": roles,
        "bytes": {role: len(FILES.get(rel, b"")) for role, rel in roles.items()},
        "sha256": {role: hashlib.sha256(FILES.get(rel, b"")).hexdigest() for role, rel in roles.items()},
    }
    shard["sha256"].update(digests or {})
    return {
        "model_version": "demo",
        "kind": "flat",
        "factory": "Flat",
        "dim": 4,
        "rows": 1,
        "shards": [shard],
        "rerank": 0,
        "rerank_dtype": "float16",
        "nprobe": 1,
        "ef_search": 1,
        "metadata_columns": [],
        "sources": [],
        "units": {},
        "identity": {},
        "built_at": "2025-01-01T00:00:00",
        "build_seconds": 0.0,
        "build_id": "1",
        "self_check": {},
    }


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def remote():
    """A writable remote index folder (memory://) with FILES; removed afterwards."""
    fs = fsspec.filesystem("memory")
    folder = "memory://indexes/out/index/model_version=demo"
    for rel, data in FILES.items():
        fs.pipe(f"{folder}/{rel}", data)
    yield fs, folder
    fs.rm("memory://indexes", recursive=True)


def put_manifest(fs, folder: str, tree: dict) -> None:
    fs.pipe(f"{folder}/index.json", json.dumps(tree).encode())


def every_file(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize(
    "path",
    ["../../../../escaped", "/etc/hostname", "build-1/../../escaped", "C:/x", "build-1\\..\\x", "./x", ""],
)
def test_a_tampered_local_index_is_refused_before_any_file_is_touched(tmp_path: Path, path: str) -> None:
    folder = tmp_path / "out" / "index" / "model_version=demo"
    folder.mkdir(parents=True)
    (folder / "index.json").write_text(json.dumps(manifest({"index": path})))
    with pytest.raises(ConfigError, match="invalid or tampered with"):
        Index.open(str(folder))


def test_a_tampered_remote_index_writes_nothing_outside_the_cache(
    tmp_path: Path, cache: Path, remote
) -> None:
    fs, folder = remote
    fs.pipe(f"{folder}/../../../escaped", b"payload")  # what the tampered paths point at
    put_manifest(fs, folder, manifest({"index": "../../../escaped", "meta": "/tmp/escaped"}))
    before = every_file(tmp_path)
    with pytest.raises(ConfigError, match="invalid or tampered with"):
        Index.open(folder)
    assert every_file(tmp_path) == before and not cache.exists()


def test_a_remote_index_is_cached_privately_and_verified(cache: Path, remote) -> None:
    fs, folder = remote
    put_manifest(fs, folder, manifest())
    local = Path(local_folder(folder, read_manifest(folder, {}), {}))
    assert local.parent == cache_root() and cache_root() == cache / "embedding" / "index"
    for path in (cache / "embedding", cache / "embedding" / "index", local):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700
    for rel, data in FILES.items():
        assert (local / rel).read_bytes() == data
    check_files(str(local), read_manifest(folder, {}), checksums=True)
    # A later load reuses the verified copy: the remote file is not read again.
    fs.pipe(f"{folder}/build-1/shard-000.faiss", b"X" * len(FILES["build-1/shard-000.faiss"]))
    assert Path(local_folder(folder, read_manifest(folder, {}), {})) == local
    assert (local / "build-1/shard-000.faiss").read_bytes() == FILES["build-1/shard-000.faiss"]


def test_a_download_that_does_not_match_its_checksum_is_discarded(cache: Path, remote) -> None:
    fs, folder = remote
    fs.pipe(f"{folder}/build-1/shard-000.faiss", b"evil!" * 10)  # same size, other bytes
    put_manifest(fs, folder, manifest())
    with pytest.raises(ConfigError, match="SHA-256"):
        local_folder(folder, read_manifest(folder, {}), {})
    entry = next((cache / "embedding" / "index").iterdir())
    assert not any(p.name.endswith(".faiss") or ".part" in p.name for p in entry.rglob("*"))


def test_a_symlink_leading_out_of_a_local_index_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    (folder / "build-1").mkdir(parents=True)
    for rel, data in FILES.items():
        (folder / rel).write_bytes(data)
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"faiss" * 10)  # same size as the shard it replaces
    (folder / "build-1/shard-000.faiss").unlink()
    (folder / "build-1/shard-000.faiss").symlink_to(outside)
    (folder / "index.json").write_text(json.dumps(manifest()))
    with pytest.raises(ConfigError, match="leads outside"):
        check_files(str(folder), read_manifest(str(folder), {}), checksums=False)


def test_a_cache_folder_that_is_not_ours_is_refused(tmp_path: Path, cache: Path, remote) -> None:
    fs, folder = remote
    put_manifest(fs, folder, manifest())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache.mkdir()
    (cache / "embedding").symlink_to(elsewhere)  # planted by someone to redirect the downloads
    with pytest.raises(ConfigError, match="not a folder of this user"):
        local_folder(folder, read_manifest(folder, {}), {})
    assert list(elsewhere.iterdir()) == []  # nothing created through the planted link
