"""Filesystem primitives shared by the outputs, the lease and the index: one place that knows how to write a
file so that no reader ever sees it half-written, on local disks and on object stores alike.

- Local disks: write a temporary file in the same folder, flush it to disk, then `os.replace` it over the
  final name (atomic on POSIX).
- Object stores (S3, GCS, ...): one PUT of the whole body under the final name; an object is never visible
  half-written there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import secrets
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from embedding.store import faults

log = logging.getLogger(__name__)


def protocol_of(fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return "file" if protocol == "local" else protocol


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return protocol_of(fs) == "file"


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path of `fs` (no protocol) as a URL that fsspec and pyarrow readers accept."""
    protocol = protocol_of(fs)
    return path if protocol == "file" else f"{protocol}://{path}"


def filesystem(url: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) of a URL or local path.

    fsspec shares one instance per set of options in a process, with its listings cached; a worker that
    lives through several runs would otherwise read a re-committed object by a stale ETag.
    """
    fs, path = url_to_fs(url, **storage_options)
    fs.invalidate_cache()
    return fs, path


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes | str, fault: str = "") -> None:
    """Write a whole file so that readers see the old content or the new, never a part of it.

    `fault` names the fault point (embedding.store.faults) between writing the content and publishing it.
    """
    body = data.encode() if isinstance(data, str) else data
    if is_local(fs):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            faults.point(fault)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    faults.point(fault)
    fs.pipe_file(path, body)  # one PUT: the object appears whole or not at all


def write_json(fs: fsspec.AbstractFileSystem, path: str, value: Any, fault: str = "") -> None:
    write_atomic(fs, path, json.dumps(value, indent=1, sort_keys=True), fault)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any | None:
    """A JSON file's value; None when it is missing, empty or unreadable (left half-written by an older
    version, say), which the caller treats as absent."""
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning("ignoring %s: not a readable JSON file (%d bytes)", to_url(fs, path), len(raw))
        return None


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes | str) -> bool:
    """Create a file only if it does not exist yet; True when this call created it.

    Local disks: `O_CREAT | O_EXCL` on a temporary file's content linked into place, so the file appears
    whole. S3: a conditional PUT (`If-None-Match: *`), which the store refuses when the object exists. Other
    stores: write, then read back and check the content is ours (documented as best effort in README).
    """
    body = data.encode() if isinstance(data, str) else data
    if is_local(fs):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails with FileExistsError when another process was first
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    if protocol_of(fs) in ("s3", "s3a"):
        return _s3_put_if_absent(fs, path, body)
    if fs.exists(path):
        return False
    fs.pipe_file(path, body)
    return fs.cat_file(path) == body


def _s3_put_if_absent(fs: fsspec.AbstractFileSystem, path: str, body: bytes) -> bool:
    bucket, _, key = path.partition("/")
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except FileExistsError:  # s3fs's translation of 412 Precondition Failed
        return False
    except OSError as exc:  # 409 ConditionalRequestConflict: another PUT of the same key raced ours
        if "Conflict" in str(exc) or "409" in str(exc):
            return False
        raise
    fs.invalidate_cache(posixpath.dirname(path))
    return True


def remove_if_unchanged(fs: fsspec.AbstractFileSystem, path: str, expected: bytes) -> bool:
    """Delete a file only if it still holds `expected`; True when this call deleted it.

    Local disks: the file is first renamed to a name of our own (atomic: of two callers only one gets it),
    then compared, and put back if it was not the expected one. Object stores have no conditional delete:
    there it is read, compared and deleted (best effort, documented in README).
    """
    if is_local(fs):
        mine = f"{path}.{secrets.token_hex(4)}.taken"
        try:
            os.rename(path, mine)
        except FileNotFoundError:
            return False
        with open(mine, "rb") as f:
            same = f.read() == expected
        if not same:
            with contextlib.suppress(FileExistsError):  # give it back, unless another took its place
                os.link(mine, path)
        os.unlink(mine)
        return same
    try:
        if fs.cat_file(path) != expected:
            return False
    except FileNotFoundError:
        return False
    remove(fs, path)
    return True


def remove(fs: fsspec.AbstractFileSystem, path: str, recursive: bool = False) -> None:
    """Delete a file or folder if it exists (deleting what is already gone is not an error)."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)


def list_names(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Base names in a folder; empty when the folder does not exist."""
    try:
        fs.invalidate_cache(folder)
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False))
    except FileNotFoundError:
        return []
