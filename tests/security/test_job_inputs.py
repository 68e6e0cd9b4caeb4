"""Hostile and careless manifests through the whole job: every row is accounted for, nothing escapes the
policy, nothing hangs, no secret is written, and crashing rows end as error rows."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.job.run import run
from tests import images_factory as f
from tests.support.http_server import ImageServer

pytestmark = pytest.mark.integration


def parquet_bytes(ids: list, uris: list, images: list | None = None) -> bytes:
    columns = {"image_id": pa.array(ids, pa.string()), "uri": pa.array(uris, pa.string())}
    if images is not None:
        columns["image"] = pa.array(images, pa.binary())
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def outputs(root: Path) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """Embedded ids and id -> (code, message) of the errors; each manifest row appears exactly once."""
    emb = pq.read_table(root / "embeddings" / "model_version=demo").column("image_id").to_pylist()
    err = pq.read_table(root / "errors" / "model_version=demo").to_pylist()
    errors = {r["image_id"]: (r["error_code"], r["error_message"]) for r in err}
    assert len(emb) == len(set(emb)) and len(errors) == len(err) and not set(emb) & set(errors)
    return set(emb), errors


HOSTILE = {
    "etc": ("/etc/hostname", "local-file rule"),
    "file-url": ("file:///etc/hostname", "local-file rule"),
    "climb": ("../x.jpg", "folder rule"),
    "loopback": (None, "network rule"),  # http://127.0.0.1:<the test server>/img/good0.jpg
    "metadata": ("http://169.254.169.254/latest/meta-data/", "network rule"),
}


def hostile_rows(server: ImageServer) -> tuple[list, list, list]:
    ids = [*HOSTILE, "inline-good"]
    uris = [u if u else f"{server.url}/img/good0.jpg" for u, _ in HOSTILE.values()] + [None]
    images = [None] * len(HOSTILE) + [f.sample_file(1)]
    return ids, uris, images


@pytest.mark.parametrize("where", ["http", "s3"])
def test_a_remote_manifest_names_nothing_it_may_not(tmp_path: Path, make_config, where: str) -> None:
    server = ImageServer({"good0.jpg": f.sample_file(0)}).start()
    s3 = None
    try:
        ids, uris, images = hostile_rows(server)
        body = parquet_bytes(ids, uris, images)
        if where == "http":
            server.files["m.parquet"] = body
            manifest, options = f"{server.url}/img/m.parquet", {}
        else:
            from tests.support.s3_server import S3Server

            s3 = S3Server().start()
            s3.create_bucket("manifests")
            s3.filesystem().pipe_file("manifests/set/m.parquet", body)
            manifest, options = "s3://manifests/set/m.parquet", {"s3": s3.storage_options}
        cfg = make_config(manifest, input={"storage_options": options})
        before = server.connections
        run(cfg)
        embedded, errors = outputs(Path(cfg.output.root))
        assert embedded == {"inline-good"}
        for image_id, (_, rule) in HOSTILE.items():
            code, message = errors[image_id]
            assert code == "InvalidManifestRow" and message.startswith(rule), (image_id, message)
        # Only the manifest itself was read from the server; no image URL was ever connected to.
        assert not any(p.startswith("/img/good0") for p in server.requests)
        assert where == "s3" or server.connections > before
    finally:
        server.stop()
        if s3 is not None:
            s3.stop()


def test_opened_networks_and_redirects_rechecked(tmp_path: Path, make_config) -> None:
    server = ImageServer({"good0.jpg": f.sample_file(0)}).start()
    other = ImageServer({"good1.jpg": f.sample_file(1)}, host="127.0.0.2").start()
    try:
        ids = ["allowed", "redirected"]
        uris = [f"{server.url}/img/good0.jpg", f"{server.url}/redirect?to={other.url}/img/good1.jpg"]
        manifest = tmp_path / "m.parquet"
        manifest.write_bytes(parquet_bytes(ids, uris))
        cfg = make_config(str(manifest), fetch={"allowed_networks": ["127.0.0.1/32"]})
        run(cfg)
        embedded, errors = outputs(Path(cfg.output.root))
        assert embedded == {"allowed"}
        assert errors["redirected"][0] == "InvalidManifestRow" and "network rule" in errors["redirected"][1]
        assert other.connections == 0
    finally:
        server.stop()
        other.stop()


def test_a_manifest_over_http_as_a_file_and_as_a_listing(tmp_path: Path, make_config) -> None:
    server = ImageServer({f"good{i}.jpg": f.sample_file(i) for i in range(4)}).start()
    try:
        server.files["a.parquet"] = parquet_bytes(["a0", "a1"], ["good0.jpg", "good1.jpg"])
        server.files["b.parquet"] = parquet_bytes(["b0", "b1"], ["good2.jpg", "good3.jpg"])
        opened = {"allowed_networks": ["127.0.0.1/32"]}
        single = make_config(f"{server.url}/img/a.parquet", fetch=opened)
        run(single)
        assert outputs(Path(single.output.root))[0] == {"a0", "a1"}
        listing = make_config(f"{server.url}/list/", fetch=opened)
        summary = run(listing)
        assert outputs(Path(listing.output.root))[0] == {"a0", "a1", "b0", "b1"}
        assert summary["rows"]["in"] == 4 and summary["rows"]["new"] == 2
    finally:
        server.stop()


def test_a_fifo_and_a_slow_server_cannot_hold_the_run(tmp_path: Path, sample_dir: Path, make_config) -> None:
    server = ImageServer({}).start()
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    try:
        table = pq.read_table(sample_dir / "manifest.parquet").slice(0, 8)
        ids = [*table.column("image_id").to_pylist(), "fifo", "slow"]
        uris = [str(sample_dir / u) for u in table.column("uri").to_pylist()] + [
            str(fifo),
            f"{server.url}/slow",
        ]
        manifest = tmp_path / "m.parquet"
        manifest.write_bytes(parquet_bytes(ids, uris))
        fetch = {"timeout_s": 1, "retries": 1, "backoff_s": 0.1, "allowed_networks": ["127.0.0.1/32"]}
        cfg = make_config(str(manifest), fetch=fetch)
        started = time.monotonic()
        summary = run(cfg)
        elapsed = time.monotonic() - started
        embedded, errors = outputs(Path(cfg.output.root))
        assert embedded == set(ids[:8])
        assert errors["fifo"][0] == "InvalidManifestRow" and "not a regular file" in errors["fifo"][1]
        assert errors["slow"][0] == "Timeout"
        decode = summary["stages"]["fetch_decode"]
        # the stuck rows cost their timeouts, (1 s x 2 attempts) + 5 s, and nothing more
        assert decode["wall_s"] <= 1 * 2 + 0.1 + 5 + 10, decode
        assert elapsed < 300
    finally:
        server.stop()


def test_no_secret_reaches_the_outputs_or_the_log(tmp_path: Path, make_config, caplog) -> None:
    from tests.support.s3_server import S3Server

    server = ImageServer({"good0.jpg": f.sample_file(0)}).start()
    server.auth = "Basic " + __import__("base64").b64encode(b"alice:hunter2pw").decode()
    s3 = S3Server().start()
    try:
        s3.create_bucket("pics")
        s3.filesystem().pipe_file("pics/good1.jpg", f.sample_file(1))
        secret = "s3cr3t-V4lue-for-the-test"
        options = {**s3.storage_options, "secret": secret, "key": "AKIAEXAMPLESECRETKEY1"}
        ids = ["auth", "s3", "missing"]
        uris = [
            f"http://alice:hunter2pw@127.0.0.1:{server.port}/auth/good0.jpg",
            "s3://pics/good1.jpg",
            f"http://alice:hunter2pw@127.0.0.1:{server.port}/img/missing.jpg",
        ]
        manifest = tmp_path / "m.parquet"
        manifest.write_bytes(parquet_bytes(ids, uris))
        cfg = make_config(
            str(manifest),
            input={"storage_options": {"s3": options}},
            fetch={"allowed_networks": ["127.0.0.1/32"]},
            index={"enabled": True},
        )
        with caplog.at_level("DEBUG"):
            run(cfg)
        embedded, errors = outputs(Path(cfg.output.root))
        assert embedded == {"auth", "s3"} and errors["missing"][0] == "NotFound"
        for path in Path(cfg.output.root).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for word in (b"hunter2pw", secret.encode(), b"AKIAEXAMPLESECRETKEY1"):
                    assert word not in data, f"{word!r} written to {path}"
        for word in ("hunter2pw", secret, "AKIAEXAMPLESECRETKEY1"):
            assert word not in caplog.text
    finally:
        server.stop()
        s3.stop()


def test_three_rows_that_crash_the_encoder_end_as_three_error_rows(
    tmp_path: Path, sample_dir: Path, make_config
) -> None:
    import psutil
    import ray

    table = pq.read_table(sample_dir / "manifest.parquet").slice(0, 24)
    ids = table.column("image_id").to_pylist()
    for k in (3, 11, 19):
        ids[k] = f"poison-{k}"  # the crashing stage dies on any batch holding an id that starts "poison"
    uris = [str(sample_dir / u) for u in table.column("uri").to_pylist()]
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(parquet_bytes(ids, uris))
    peak = {"workers": 0}
    done = threading.Event()

    def count() -> None:
        while not done.wait(0.1):  # a sampler of the isolating round's worker processes, not a wait
            workers = [p for p in psutil.process_iter(["cmdline"]) if _isolating(p)]
            peak["workers"] = max(peak["workers"], len(workers))

    sampler = threading.Thread(target=count, daemon=True)
    sampler.start()
    try:
        cfg = make_config(
            str(manifest),
            inference={
                "stage_class": "tests.support.stages:CrashingStage",
                "batch_size": 8,
                "max_task_retries": 0,  # each crash is final at once: the test is about the last round
            },
            input={"unit_rows": 8},
            run={"executor": "ray"},  # a crashing row is isolated by the Ray plan
        )
        summary = run(cfg)
    finally:
        done.set()
        sampler.join()
    embedded, errors = outputs(Path(cfg.output.root))
    crashed = {i for i, (code, _) in errors.items() if code == "WorkerCrashed"}
    assert crashed == {"poison-3", "poison-11", "poison-19"} and len(embedded) == 21
    assert summary["rows"]["failed_by_code"] == {"WorkerCrashed": 3}
    cpus = int(ray.cluster_resources()["CPU"])
    assert summary["rounds"]["isolated"] > 3 and 0 < peak["workers"] <= cpus, (
        f"{peak['workers']} worker processes of the isolating round ran at once on {cpus} CPUs"
    )


def _isolating(process) -> bool:
    """A Ray worker process running a task of the isolating round (its stages are named `isolated`)."""
    try:
        line = " ".join(process.info["cmdline"] or ())
    except (KeyError, TypeError):
        return False
    return line.startswith("ray::") and "isolated" in line
