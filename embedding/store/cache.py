"""The user's cache folder, and SHA-256 digests of local files computed once per file version.

A digest is cached under a key made of the file's real path, size, modification and change times, inode and
device. `touch` or `cp -p` change the change time (ctime), which no user tool can set back, so any write to
the file, even one that restores size and mtime, gives a new key and a fresh digest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$XDG_CACHE_HOME/embedding/...` (default `~/.cache/embedding/...`), created private to the user."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embedding"
    folder = base.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    base.chmod(0o700)
    return folder


def sha256_stream(read, chunk: int = 1 << 20) -> str:
    """SHA-256 of everything a `read(n)` callable returns until it returns nothing."""
    digest = hashlib.sha256()
    for block in iter(lambda: read(chunk), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a local file, from the cache when this exact version of the file was hashed before."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}"
    entry = cache_dir("sha256") / hashlib.sha256(key.encode()).hexdigest()
    try:
        cached = entry.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    with open(real, "rb") as f:
        value = sha256_stream(f.read)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(value)
        os.replace(tmp, entry)
    except OSError:  # a read-only home: the digest is still right, only not cached
        pass
    return value
