"""Reads that never return cost an error row, never a hung task (issue 11).

Bound from the issue: every row ends within fetch.timeout_s x (retries + 1) plus 5 s, and the caller (a
thread pool, as the pipeline uses) returns. Stuck reads are planted (a hook that blocks until released)
or served (a FIFO, a server that sends one byte a second); nothing here waits on a sleep.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from embedding.config import FetchConfig
from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch import deadline, sources
from embedding.fetch.sources import fetch
from embedding.fetch.uripolicy import SourceSettings
from tests.support.http_server import ImageServer

LOOPBACK = ["127.0.0.1/32"]


def settings(timeout: float = 1.0, retries: int = 1, **extra) -> SourceSettings:
    cfg = FetchConfig(timeout_s=timeout, retries=retries, backoff_s=0.1, allowed_networks=LOOPBACK, **extra)
    return SourceSettings(("file", "http", "https"), 1 << 20, cfg)


def bound(s: SourceSettings) -> float:
    return s.fetch.timeout_s * (s.fetch.retries + 1) + 5


def finish_abandoned_reads() -> int:
    """Join the threads of abandoned reads (they end once released); returns those still running."""
    for thread in threading.enumerate():
        if thread.name.startswith("embedding-fetch"):
            thread.join(timeout=10)
    return deadline.stuck_count()


@pytest.fixture
def stuck_reads(monkeypatch: pytest.MonkeyPatch):
    """Local reads of files named stuck* block until the test ends (a stalled NFS mount)."""
    release = threading.Event()
    calls: list[str] = []
    real = sources._read_local

    def read(path: str, max_bytes: int) -> bytes:
        calls.append(path)
        if os.path.basename(path).startswith("stuck"):
            release.wait()
            raise OSError("the mount came back")
        return real(path, max_bytes)

    monkeypatch.setattr(sources, "_read_local", read)
    yield calls
    release.set()
    assert finish_abandoned_reads() == 0


def special_file(kind: str, tmp_path: Path) -> str:
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes: open() for reading would block forever
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    elif kind == "device":
        return "/dev/zero"  # endless bytes: must not be read at all
    elif kind == "fifo-behind-symlink":
        os.mkfifo(tmp_path / "real-fifo")
        path.symlink_to(tmp_path / "real-fifo")
    return str(path)


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "device", "fifo-behind-symlink"])
def test_special_files_are_refused_at_once(kind: str, tmp_path: Path) -> None:
    path = special_file(kind, tmp_path)
    s = settings(retries=2)
    started = time.monotonic()
    with pytest.raises(EmbeddingError) as info:
        fetch(path, s)
    assert time.monotonic() - started < bound(s)
    assert info.value.code == ErrorCode.INVALID_MANIFEST_ROW and info.value.attempts == 1
    assert "not a regular file" in info.value.message


def test_a_read_that_never_returns_is_a_timeout_and_nobody_waits_for_it(
    stuck_reads: list[str], tmp_path: Path
) -> None:
    s = settings(timeout=1, retries=1)
    started = time.monotonic()
    with pytest.raises(EmbeddingError) as info:
        fetch(str(tmp_path / "stuck.jpg"), s)
    assert time.monotonic() - started < bound(s)
    assert info.value.code == ErrorCode.TIMEOUT and info.value.attempts == 2
    assert len(stuck_reads) == 2 and deadline.stuck_count() == 2  # both attempts abandoned, not joined


def test_stuck_reads_in_a_pool_neither_hang_it_nor_starve_later_rows(
    stuck_reads: list[str], tmp_path: Path
) -> None:
    """The pipeline's shape: a pool of 8 fetching 60 rows, 12 of which never return (more than the
    pool has threads). The pool's `with` block ends, and every good row is read, none a false Timeout."""
    good = []
    for i in range(48):
        path = tmp_path / f"good-{i}.jpg"
        path.write_bytes(b"x" * (100 + i))
        good.append(str(path))
    stuck = [str(tmp_path / f"stuck-{i}.jpg") for i in range(12)]
    rows = good[:24] + stuck + good[24:]
    s = settings(timeout=1, retries=0)
    results: dict[str, bytes | ErrorCode] = {}
    started = time.monotonic()
    with cf.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(fetch, row, s): row for row in rows}
        for future in cf.as_completed(futures):
            try:
                results[futures[future]] = future.result()[0]
            except EmbeddingError as exc:
                results[futures[future]] = exc.code
    elapsed = time.monotonic() - started
    assert len(results) == len(rows)  # every row accounted for
    assert all(results[row] == ErrorCode.TIMEOUT for row in stuck)
    assert all(results[row] == Path(row).read_bytes() for row in good)
    waves = -(-len(stuck) // 8)  # stuck rows can occupy all 8 threads at once for one timeout each
    assert elapsed < waves * bound(s)


def test_stuck_reads_are_bounded_per_process(stuck_reads: list[str], tmp_path: Path) -> None:
    s = settings(timeout=0.5, retries=0, max_stuck_reads=2)
    for i in range(2):
        with pytest.raises(EmbeddingError) as info:
            fetch(str(tmp_path / f"stuck-{i}.jpg"), s)
        assert info.value.code == ErrorCode.TIMEOUT
    started = time.monotonic()
    with pytest.raises(EmbeddingError) as info:
        fetch(str(tmp_path / "stuck-2.jpg"), s)
    assert time.monotonic() - started < 0.5  # refused at once, no third thread started
    assert info.value.code == ErrorCode.FETCH_FAILED and "still stuck" in info.value.message
    assert len(stuck_reads) == 2


def test_a_server_sending_one_byte_a_second_is_a_timeout() -> None:
    server = ImageServer({}).start()
    try:
        s = settings(timeout=2, retries=1)
        started = time.monotonic()
        with pytest.raises(EmbeddingError) as info:
            fetch(f"{server.url}/slow", s)
        assert time.monotonic() - started < bound(s)
        assert info.value.code == ErrorCode.TIMEOUT and info.value.attempts == 2
        assert finish_abandoned_reads() == 0  # the connections were shut down: no thread left reading
        assert server.slow_sent < 20
    finally:
        server.stop()


def test_the_pipelines_decode_loop_with_a_stuck_read_returns(stuck_reads: list[str], tmp_path: Path) -> None:
    """The job's own decode step (its fetch pool) over 24 rows, one of which never
    returns: the step returns within the bound, the stuck row is a Timeout, every other row decoded.
    The hang of the issue lived here: leaving the pools waited for the abandoned read."""
    from embedding.media.imagecheck import ImageLimits
    from embedding.media.load import MediaSettings
    from embedding.media.resize import Preprocess
    from embedding.media.video import VideoSettings
    from embedding.stages.decode import decode_rows
    from tests import images_factory as f
    from tests.support.rows import stream_rows

    uris = []
    for i in range(24):
        name = "stuck.jpg" if i == 7 else f"img-{i}.jpg"
        uris.append(f.write(tmp_path, name, f.sample_file(i)) if i != 7 else str(tmp_path / name))
    n = len(uris)
    batch = stream_rows(uris)
    s = settings(timeout=1, retries=1)
    started = time.monotonic()
    out = decode_rows(batch, MediaSettings(s, Preprocess(size=(64, 64)), ImageLimits(), VideoSettings()))
    assert time.monotonic() - started < bound(s)
    codes = out.column("error_code").to_pylist()
    assert codes[7] == ErrorCode.TIMEOUT and out.column("attempts")[7].as_py() == 2
    assert codes[:7] + codes[8:] == [None] * (n - 1)  # every other row decoded, each accounted for
