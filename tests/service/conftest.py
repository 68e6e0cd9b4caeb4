"""Service test fixtures: the demo sample embedded and indexed once per session, and real servers.

The collection is the sample (384 images) plus two rows that exercise thumbnails: one with inline image
bytes and no uri, and one whose file is removed after the run (its thumbnail is a placeholder), and one
re-encoded copy of a sample image (a near duplicate, for dedup and the duplicate groups, which the fixture
finds after indexing). Besides caption and tags, every row carries a number (`price`), a date
(`taken_on`), a timestamp (`added_at`) and a string (`shape`), for the filters and the page's range
pickers. Each test module starts its own server (module-scoped) on the shared local Ray, on 127.0.0.1 and
a free port.
"""

from __future__ import annotations

import asyncio
import io
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from PIL import Image

from embedding.config import Config
from embedding.index.duplicates import find_duplicates
from embedding.job.run import run
from embedding.service.app import start, stop

REPO = Path(__file__).resolve().parents[2]
INLINE_ID, GONE_ID, COPY_ID = "extra-inline", "extra-gone", "extra-copy"
# Carried columns of every row, besides caption and tags (the sample's manifest has `shape` already).
CARRIED = ["caption", "tags", "shape", "price", "taken_on", "added_at"]
TEXTS = {"t-en": "a red circle", "t-fr": "un cercle rouge", "t-de": "ein blauer Stern auf grauem Grund"}


@dataclass
class Served:
    """What the job made for the service tests."""

    folder: Path
    tree: dict[str, Any]  # the config, as YAML would hold it
    truth: dict[str, tuple[str, str]]  # image_id -> (colour, shape)
    uris: dict[str, str]  # image_id -> local path of the image file (the sample's rows)
    columns: dict[str, dict[str, Any]]  # image_id -> its price, taken_on, added_at and shape
    copies: dict[str, str]  # the planted copy's id -> its original's id
    inline_bytes: bytes  # the inline row's image (a mirrored blue star)
    image_vectors: dict[str, np.ndarray]  # image_id -> the job's vector
    text_vectors: dict[str, np.ndarray]  # text -> the job's vector

    def config(self, root: Path | None = None, **sections: dict[str, Any]) -> Config:
        tree = {name: dict(values) for name, values in self.tree.items()}
        if root is not None:
            tree["output"] = {**tree["output"], "root": str(root)}
        for name, values in sections.items():
            tree.setdefault(name, {}).update(values)
        return Config.model_validate(tree)


def _vectors(table: pa.Table, key: str) -> dict[str, np.ndarray]:
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return dict(zip(table.column(key).to_pylist(), vectors, strict=True))


def _mirrored(data: bytes, how: Image.Transpose) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").transpose(how).save(out, "JPEG", quality=95)
    return out.getvalue()


def _reencoded(data: bytes) -> bytes:
    """The same picture as a JPEG of another quality: other bytes (another digest), nearly the same vector."""
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=80)
    return out.getvalue()


def _carried(number: int) -> dict[str, Any]:
    """A row's number, date and timestamp: spread over their ranges, unrelated to colour and shape."""
    return {
        "price": round(1 + (number * 37 % 200) / 4, 2),  # 1.0 to 50.75
        "taken_on": date(2024, 1, 1) + timedelta(days=number * 11 % 366),  # within 2024
        "added_at": datetime(2024, 3, 1, tzinfo=UTC) + timedelta(minutes=number * 997 % 100_000),
    }


@pytest.fixture(scope="session")
def served(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, ray_local) -> Served:
    folder = tmp_path_factory.mktemp("served")
    sample = pq.read_table(sample_dir / "manifest.parquet").to_pylist()
    for row in sample:
        row["uri"] = str(sample_dir / row["uri"])
        row["image"] = None
    # The extra rows are mirror images of a blue star: they rank with the blue stars, and no two rows of
    # the collection have the same vector (exact ties may come in either order).
    star = next(r for r in sample if (r["colour"], r["shape"]) == ("blue", "star"))
    star_bytes = _mirrored(Path(star["uri"]).read_bytes(), Image.Transpose.FLIP_LEFT_RIGHT)
    gone = folder / "gone.jpg"
    gone.write_bytes(_mirrored(Path(star["uri"]).read_bytes(), Image.Transpose.FLIP_TOP_BOTTOM))
    # A red circle copied: a query for red circles finds both, and dedup folds one into the other.
    original = next(r for r in sample if (r["colour"], r["shape"]) == ("red", "circle"))
    copy = folder / "copy.jpg"
    copy.write_bytes(_reencoded(Path(original["uri"]).read_bytes()))
    extras = [
        {**star, "image_id": INLINE_ID, "uri": None, "image": star_bytes},
        {**star, "image_id": GONE_ID, "uri": str(gone), "image": None},
        {**original, "image_id": COPY_ID, "uri": str(copy), "image": None},
    ]
    rows = sample + extras
    for number, row in enumerate(rows):
        row.update(_carried(number))
    schema = (
        pq.read_schema(sample_dir / "manifest.parquet")
        .append(pa.field("image", pa.binary()))
        .append(pa.field("price", pa.float64()))
        .append(pa.field("taken_on", pa.date32()))
        .append(pa.field("added_at", pa.timestamp("us", tz="UTC")))
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "images.parquet")
    texts = pa.table({"text_id": list(TEXTS), "text": list(TEXTS.values())})
    pq.write_table(texts, folder / "texts.parquet")

    tree: dict[str, Any] = {
        "input": {"manifest": str(folder / "images.parquet"), "unit_rows": 128, "carry_columns": CARRIED},
        "output": {"root": str(folder / "out")},
        "model": {"version": "demo"},
        "inference": {"device": "cpu", "batch_size": 32},
        # the tests' own image server listens on 127.0.0.1, which the network rules refuse unless opened
        "fetch": {"timeout_s": 5, "retries": 0, "backoff_s": 0.1, "allowed_networks": ["127.0.0.1/32"]},
        "index": {"enabled": True, "shards": 2},
        "service": {"index_poll_s": 0.2, "encoder": {"num_cpus": 0.5}},
    }
    image_cfg = Config.model_validate(tree)
    assert run(image_cfg)["rows"]["embedded"] == len(rows)
    find_duplicates(image_cfg)  # the groups GET /retrieval/duplicates and the page's Duplicates view show
    text_cfg = Config.model_validate(
        {**tree, "input": {"manifest": str(folder / "texts.parquet")}, "index": {"enabled": False}}
    )
    run(text_cfg)
    gone.unlink()  # after the run: its thumbnail has no source any more

    root = Path(tree["output"]["root"])
    images = pq.read_table(root / "embeddings" / "model_version=demo")
    texts_out = pq.read_table(root / "text_embeddings" / "model_version=demo")
    by_text = {TEXTS[k]: v for k, v in _vectors(texts_out, "text_id").items()}
    return Served(
        folder=folder,
        tree=tree,
        truth={r["image_id"]: (r["colour"], r["shape"]) for r in rows},
        uris={r["image_id"]: r["uri"] for r in sample},
        columns={r["image_id"]: {k: r[k] for k in ("price", "taken_on", "added_at", "shape")} for r in rows},
        copies={COPY_ID: original["image_id"]},
        inline_bytes=star_bytes,
        image_vectors=_vectors(images, "image_id"),
        text_vectors=by_text,
    )


def copy_root(served: Served, target: Path) -> Path:
    """A private copy of the outputs, for a module that rebuilds the index."""
    shutil.copytree(served.folder / "out", target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout_s: float = 120, what: str = "condition") -> Any:
    """Poll a condition until it returns something truthy (deadline: a failure, not a hang)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _ready(url: str, headers: dict[str, str]) -> bool:
    try:
        models = requests.get(f"{url}/retrieval/models", headers=headers, timeout=10)
    except requests.ConnectionError:
        return False
    return models.status_code == 200


@contextmanager
def running(cfg: Config, headers: dict[str, str] | None = None) -> Iterator[str]:
    """The real service on the shared local Ray, on 127.0.0.1 and a free port; its base URL."""
    started = start(cfg, port=free_port())
    try:
        wait_until(lambda: _ready(started.url, headers or {}), what="the service to answer")
        yield started.url
    finally:
        stop()


@dataclass
class Command:
    url: str
    output: list[str]  # what the command printed until it was ready
    pid: int


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)


@contextmanager
def serving_command(
    cfg: Config,
    folder: Path,
    ray_address: str | None,
    host: str = "0.0.0.0",
    env_vars: dict[str, str] | None = None,
) -> Iterator[Command]:
    """`embedding serve CONFIG --host HOST --port PORT` as users run it, joined to the shared local Ray
    (`ray_address` None: it starts a Ray of its own), with `env_vars` added to its environment.

    Ready when it prints its "Ctrl-C" line (after the application is up); stopped with SIGINT, as Ctrl-C
    does, which must end it cleanly (exit status 0) and take the service down.
    """
    config = folder / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EMBEDDING_API_KEYS", None)
    env.update(env_vars or {})
    command = [
        sys.executable,
        "-m",
        "embedding.cli",
        "serve",
        str(config),
        "--host",
        host,
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    output: list[str] = []
    try:
        while not any("Ctrl-C stops the service" in line for line in output):
            output.append(lines.get(timeout=300))
        yield Command(f"http://127.0.0.1:{port}", output, process.pid)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0, "`embedding serve` did not end cleanly on SIGINT"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def assert_burst_overflows(url: str, served: Served, retry_after_s: int = 3) -> None:
    """24 images at once: some are encoded (200), the rest get the hosted 429 with Retry-After."""
    bodies = [Path(served.uris[i]).read_bytes() for i in sorted(served.uris)[:24]]
    params = {"api-version": "2024-02-01"}

    async def burst() -> list[tuple[int, dict, dict]]:
        async with aiohttp.ClientSession() as session:

            async def one(data: bytes) -> tuple[int, dict, dict]:
                route = f"{url}/computervision/retrieval:vectorizeImage"
                async with session.post(route, params=params, data=data) as answer:
                    return answer.status, dict(answer.headers), await answer.json()

            return await asyncio.gather(*(one(b) for b in bodies))

    answers = asyncio.run(burst())
    statuses = [status for status, _, _ in answers]
    assert set(statuses) == {200, 429}, statuses
    for status, headers, body in answers:
        if status == 429:
            assert headers["Retry-After"] == str(retry_after_s) and headers["x-ms-error-code"] == "429"
            assert body["error"]["code"] == "429"
            assert f"Try again in {retry_after_s} seconds" in body["error"]["message"]


def cosine(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium, driven by Playwright (which never downloads a browser of its own)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"the page tests need Debian's Chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()
