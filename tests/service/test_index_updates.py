"""The service follows index updates without a restart: a client searches without pause while three
updates land (a unit retired, committed again, another retired); no request fails, and every answer comes
from exactly one build: its results are among the ids that build holds, never a retired one."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from embedding.index.build import build_index
from embedding.index.store import index_dir, read_manifest
from embedding.store.partition import Partition
from tests.service.conftest import Served, copy_root, running, wait_until

pytestmark = pytest.mark.integration


def _live_ids(part: Partition) -> set[str]:
    table = part.read("embeddings", columns=["image_id"], units=sorted(part.markers()))
    return set(table.column("image_id").to_pylist())


def test_searches_go_on_while_three_updates_land(served: Served, tmp_path: Path) -> None:
    # Each change is a third of this small collection: updates all the same (no compaction).
    cfg = served.config(root=copy_root(served, tmp_path / "out"), index={"compact_at": 10})
    part = Partition(cfg.output.root, "image", "demo")
    first = read_manifest(index_dir(cfg.output.root, "demo"), {})
    held = {first.build_id: _live_ids(part)}
    units = sorted(part.markers())
    kept = pq.read_table(part.part_path("embeddings", units[0]), filesystem=part.fs)
    marker = dict(part.markers()[units[0]].body)
    retired = part.read("embeddings", columns=["image_id"], units=[units[1]]).column("image_id")[0].as_py()
    answers: list[tuple[int, str | None, list[str]]] = []
    done = threading.Event()

    with running(cfg) as url:

        def client() -> None:
            with requests.Session() as session:
                while not done.is_set():
                    got = session.post(f"{url}/retrieval:search", json={"text": "a blue star", "top": 40})
                    body = got.json()
                    answers.append(
                        (
                            got.status_code,
                            body.get("buildId"),
                            [r["imageId"] for r in body.get("results", [])],
                        )
                    )

        thread = threading.Thread(target=client)
        thread.start()
        try:
            wait_until(lambda: len(answers) >= 3, what="the client's first answers")
            changes = [
                lambda: part.retire([units[0]]),
                lambda: part.commit(
                    units[0], kept, part.read("errors").schema.empty_table(), {**marker, "again": 1}
                ),
                lambda: part.retire([units[1]]),
            ]
            for change in changes:
                change()
                manifest = build_index(cfg)
                assert manifest.change.action == "update", manifest.change
                held[manifest.build_id] = _live_ids(part)
                seen = len(answers)
                wait_until(
                    lambda new=manifest.build_id, seen=seen: any(b == new for _, b, _ in answers[seen:]),
                    what="the update served",
                )
        finally:
            done.set()
            thread.join(timeout=120)
        # A retired image is gone from every route: more-like-this and its thumbnail too.
        gone = requests.get(f"{url}/retrieval/thumbnails/{retired}", timeout=30)
        assert gone.status_code == 404 and gone.json()["error"]["innererror"]["code"] == "ImageNotFound"
        alike = requests.post(f"{url}/retrieval:search", json={"imageId": retired}, timeout=30)
        assert alike.status_code == 404

    assert {status for status, _, _ in answers} == {200}
    assert [b for b in dict.fromkeys(b for _, b, _ in answers)] == list(held)  # each build in its turn
    for _, build, ids in answers:
        assert set(ids) <= held[build], f"build {build} answered with ids it does not hold"
