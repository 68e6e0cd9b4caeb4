"""The full job with manifest, images and outputs in a bucket of a local S3-compatible server."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from embedding.api import search
from embedding.index.search import Index
from embedding.job.run import run
from tests.support.s3_server import S3Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    yield server
    server.stop()


def test_job_reads_and_writes_s3(s3: S3Server, sample_dir: Path, make_config) -> None:
    s3.create_bucket("bucket")
    fs = s3.filesystem()
    manifest = pq.read_table(sample_dir / "manifest.parquet").slice(0, 48)
    for uri in manifest.column("uri").to_pylist():  # relative URIs: resolved against the manifest's folder
        fs.put(str(sample_dir / uri), f"bucket/sample/{uri}")
    with fs.open("bucket/sample/manifest.parquet", "wb") as f:
        pq.write_table(manifest, f)
    options = s3.storage_options
    cfg = make_config(
        "s3://bucket/sample/manifest.parquet",
        input={"storage_options": {"s3": options}},
        output={"root": "s3://bucket/out", "storage_options": options},
        index={"enabled": True, "shards": 2},
        run={"executor": "ray"},  # the workers read and write S3 with the settings shipped to them
    )
    summary = run(cfg)
    assert summary["rows"]["embedded"] == 48 and summary["rows"]["failed"] == 0
    parts = fs.glob("bucket/out/embeddings/model_version=demo/*.parquet")
    assert parts and fs.glob("bucket/out/errors/model_version=demo/*.parquet")
    table = pq.read_table("bucket/out/embeddings/model_version=demo", filesystem=fs)
    assert table.num_rows == 48
    assert set(table.column("uri").to_pylist()) == {
        f"s3://bucket/sample/{u}" for u in manifest.column("uri").to_pylist()
    }
    assert fs.exists(f"bucket/out/runs/{summary['run_id']}/summary.json")
    assert fs.exists("bucket/out/index/model_version=demo/index.json")
    index = Index.for_version("s3://bucket/out", "demo", options)
    assert index.manifest.rows == 48
    hits = search("a red circle", cfg, top=3, index=index)
    assert len(hits) == 3 and all(h.uri.startswith("s3://bucket/sample/") for h in hits)
    rerun = run(cfg)
    assert rerun["rows"]["new"] == 0 and rerun["rows"]["skipped_done"] == 48
