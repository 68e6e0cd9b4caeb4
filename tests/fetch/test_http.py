"""http(s):// sources against a local server that returns 404s, stalls and oversized bodies."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.config import FetchConfig
from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch.sources import fetch
from embedding.fetch.uripolicy import SourceSettings
from embedding.job.run import run
from tests import images_factory as f
from tests.support.http_server import ImageServer

LIMIT = 1024 * 1024


@pytest.fixture
def server():
    files = {f"good{i}.jpg": f.sample_file(i) for i in range(6)}
    srv = ImageServer(files).start()
    yield srv
    srv.stop()


# The test server listens on loopback, which the network rule refuses unless a config opens it.
LOOPBACK = ["127.0.0.1/32"]


def settings(timeout: float = 1.0) -> SourceSettings:
    fetch_cfg = FetchConfig(timeout_s=timeout, retries=1, backoff_s=0.1, allowed_networks=LOOPBACK)
    return SourceSettings(("http", "https"), LIMIT, fetch_cfg)


def expect(code: ErrorCode, url: str) -> EmbeddingError:
    with pytest.raises(EmbeddingError) as info:
        fetch(url, settings())
    assert info.value.code == code, info.value
    return info.value


def test_ok_and_404(server: ImageServer) -> None:
    data, attempts = fetch(f"{server.url}/img/good1.jpg", settings())
    assert data == server.files["good1.jpg"] and attempts == 1
    server.files["a photo é.jpg"] = server.files["good1.jpg"]  # raw space and non-ASCII, as manifests have
    assert fetch(f"{server.url}/img/a photo é.jpg", settings())[0] == server.files["good1.jpg"]
    assert server.requests[-1] == "/img/a%20photo%20%C3%A9.jpg"
    assert fetch(f"{server.url}/img/a%20photo%20%C3%A9.jpg", settings())[0] == server.files["good1.jpg"]
    server.files["100%.jpg"] = server.files["good1.jpg"]
    assert fetch(f"{server.url}/img/100%.jpg", settings())[0] == server.files["good1.jpg"]
    assert expect(ErrorCode.NOT_FOUND, f"{server.url}/missing").attempts == 1


@pytest.mark.parametrize("path", ["/stall", "/hang"])
def test_a_stalled_response_times_out_within_the_timeout(server: ImageServer, path: str) -> None:
    started = time.monotonic()
    error = expect(ErrorCode.TIMEOUT, server.url + path)
    elapsed = time.monotonic() - started
    # two attempts of 1 s each and a 0.1 s backoff; nothing waits for the server's 60 s stall
    assert error.attempts == 2 and elapsed < 4.0


def test_an_oversized_body_is_cut_at_the_limit(server: ImageServer) -> None:
    expect(ErrorCode.INVALID_IMAGE_SIZE, f"{server.url}/big")
    time.sleep(0.5)
    # The server could push what the sockets buffer, but far less than the 50 MiB body.
    assert server.big_sent < 16 * 1024 * 1024


def test_transient_failures_are_retried_by_a_later_run(
    server: ImageServer, tmp_path: Path, make_config
) -> None:
    urls = [f"{server.url}/img/good{i}.jpg" for i in range(4)]
    urls += [
        f"{server.url}/flaky/good4.jpg",
        f"{server.url}/missing",
        f"{server.url}/stall",
        f"{server.url}/big",
    ]
    ids = ["g0", "g1", "g2", "g3", "flaky", "missing", "stall", "big"]
    manifest = tmp_path / "http.parquet"
    pq.write_table(pa.table({"image_id": ids, "uri": urls}), manifest)
    cfg = make_config(
        str(manifest),
        fetch={"timeout_s": 1, "retries": 1, "backoff_s": 0.1, "allowed_networks": LOOPBACK},
        limits={"max_image_bytes": LIMIT},
        run={"executor": "ray"},  # the retry round reads the unit's errors in a Ray worker
    )
    first = run(cfg)
    assert first["rows"]["failed_by_code"] == {
        "FetchFailed": 1,
        "NotFound": 1,
        "Timeout": 1,
        "InvalidImageSize": 1,
    }
    server.flaky = False  # the server recovers: the next run retries the transient errors only
    second = run(cfg)
    assert second["rows"]["retried"] == 2 and second["rows"]["embedded"] == 1  # flaky now works, stall not
    root = Path(cfg.output.root)
    emb = pq.read_table(root / "embeddings").to_pandas()
    err = pq.read_table(root / "errors").to_pandas()
    assert sorted(emb["image_id"]) == ["flaky", "g0", "g1", "g2", "g3"]
    assert dict(zip(err["image_id"], err["error_code"], strict=True)) == {
        "missing": "NotFound",
        "stall": "Timeout",
        "big": "InvalidImageSize",
    }
    assert int(err.loc[err["image_id"] == "stall", "attempts"].iloc[0]) == 4  # 2 per run
