"""Exactly once, whatever changes: the index follows every change of the manifest, ids are never embedded
twice, one vector space per version name, one writer per output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.errors import ConfigError
from embedding.index.search import Index
from embedding.job.run import run
from embedding.store.lease import LeaseHeld
from tests import images_factory as f
from tests.support.http_server import ImageServer
from tests.support.runs import kill_group, start_run, write_config

pytestmark = pytest.mark.integration


def sample_rows(sample_dir: Path, start: int, stop: int) -> tuple[list[str], list[str]]:
    table = pq.read_table(sample_dir / "manifest.parquet").slice(start, stop - start)
    return table.column("image_id").to_pylist(), [
        str(sample_dir / u) for u in table.column("uri").to_pylist()
    ]


def write(path: Path, ids: list, uris: list) -> Path:
    pq.write_table(
        pa.table({"image_id": pa.array(ids, pa.string()), "uri": pa.array(uris, pa.string())}), path
    )
    return path


def outcome(root: Path) -> tuple[set[str], list[tuple[str, int, str]], set[str], str]:
    """Embedded ids, error rows, indexed ids and the index's build id; checks nothing is held twice."""
    emb = pq.read_table(root / "embeddings" / "model_version=demo").column("image_id").to_pylist()
    err = pq.read_table(root / "errors" / "model_version=demo")
    errors = list(
        zip(
            err["source_file"].to_pylist(),
            err["row_index"].to_pylist(),
            err["error_code"].to_pylist(),
            strict=True,
        )
    )
    index = Index.for_version(str(root), "demo")
    indexed = [i for shard in index.shards for i in shard.meta.column("image_id").to_pylist()]
    assert len(emb) == len(set(emb)), "an id is embedded twice"
    assert len(indexed) == len(set(indexed)) == index.manifest.rows, "an id is indexed twice"
    assert len({(s, r) for s, r, _ in errors}) == len(errors), "a row failed twice"
    return set(emb), errors, set(indexed), index.manifest.build_id


def test_the_index_holds_exactly_the_embedded_ids_of_the_current_manifest(
    tmp_path: Path, sample_dir: Path, make_config
) -> None:
    server = ImageServer({f"good{i}.jpg": f.sample_file(i) for i in range(3)}).start()
    try:
        folder = tmp_path / "manifests"
        folder.mkdir()
        ids, uris = sample_rows(sample_dir, 0, 20)
        ids += ["flaky0", "flaky1", "flaky2", "late"]
        uris += [f"{server.url}/flaky/good{i}.jpg" for i in range(3)] + [str(tmp_path / "late.jpg")]
        a = write(folder / "a.parquet", ids, uris)
        opened = {"allowed_networks": ["127.0.0.1/32"]}  # the test's own server
        cfg = make_config(
            str(folder), input={"unit_rows": 8}, index={"enabled": True, "shards": 2}, fetch=opened
        )
        root = Path(cfg.output.root)

        run(cfg)  # the server fails (503): 3 FetchFailed rows; late.jpg does not exist yet: NotFound
        embedded, errors, indexed, first_build = outcome(root)
        assert sorted(c for *_, c in errors) == ["FetchFailed"] * 3 + ["NotFound"]
        assert indexed == embedded == set(ids) - {"flaky0", "flaky1", "flaky2", "late"}

        server.flaky = False  # transient errors are retried by the next run, and the index follows
        summary = run(cfg)
        embedded, errors, indexed, build = outcome(root)
        assert summary["rows"]["retried"] == 3 and summary["rows"]["embedded"] == 3
        assert indexed == embedded == set(ids) - {"late"} and build != first_build

        (tmp_path / "late.jpg").write_bytes(f.sample_file(4))  # a permanent error: only --retry-errors
        assert run(cfg)["rows"]["retried"] == 0
        again = make_config(
            str(folder),
            input={"unit_rows": 8},
            index={"enabled": True},
            run={"retry_errors": True},
            fetch=opened,
        )
        run(again)
        embedded, errors, indexed, build = outcome(root)
        assert not errors and indexed == embedded == set(ids)

        unchanged = run(cfg)  # nothing changed: nothing redone, the index is not rebuilt
        assert unchanged["rows"]["embedded"] == 0 and outcome(root)[3] == build

        b_ids, b_uris = sample_rows(sample_dir, 20, 28)
        write(folder / "b.parquet", b_ids, b_uris)  # an appended file
        assert run(cfg)["rows"]["new"] == 8
        embedded, errors, indexed, build = outcome(root)
        assert indexed == embedded == set(ids) | set(b_ids)

        write(a, ids[:2] + ids[3:], uris[:2] + uris[3:])  # a row removed from a manifest file
        removed = run(cfg)
        embedded, errors, indexed, build = outcome(root)
        assert removed["rows"]["adopted"] == len(ids) - 1 and removed["rows"]["embedded"] == 0
        assert indexed == embedded == (set(ids) - {ids[2]}) | set(b_ids)

        overwrite = make_config(
            str(folder),
            input={"unit_rows": 8},
            index={"enabled": True},
            run={"mode": "overwrite"},
            fetch=opened,
        )
        run(overwrite)
        embedded, errors, indexed, rebuilt = outcome(root)
        assert indexed == embedded == (set(ids) - {ids[2]}) | set(b_ids) and rebuilt != build
    finally:
        server.stop()


def test_an_id_committed_in_one_file_is_a_duplicate_in_a_file_that_sorts_first(
    tmp_path: Path, sample_dir: Path, make_config
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    ids, uris = sample_rows(sample_dir, 0, 10)
    write(folder / "b.parquet", ids, uris)
    cfg = make_config(str(folder), index={"enabled": True})
    run(cfg)
    more_ids, more_uris = sample_rows(sample_dir, 10, 15)
    write(folder / "a.parquet", [ids[0], *more_ids], [uris[0], *more_uris])  # sorts first, repeats ids[0]
    summary = run(cfg)
    embedded, errors, indexed, _ = outcome(Path(cfg.output.root))
    assert embedded == indexed == set(ids) | set(more_ids) and len(indexed) == 15
    assert [(Path(s).name, r, c) for s, r, c in errors] == [("a.parquet", 0, "DuplicateId")]
    err = pq.read_table(Path(cfg.output.root) / "errors" / "model_version=demo")
    assert "b.parquet" in err["error_message"][0].as_py()
    assert summary["rows"]["failed_by_code"] == {"DuplicateId": 1}


def test_a_redefined_version_and_a_wrong_width_are_refused_at_start(
    tmp_path: Path, sample_dir: Path, make_config
) -> None:
    ids, uris = sample_rows(sample_dir, 0, 6)
    manifest = write(tmp_path / "m.parquet", ids, uris)
    weights = str(Path("embedding/demo/weights/demo.safetensors").resolve())
    mine = {"architecture": "embedding-demo", "weights": weights, "languages": ["en"]}
    cfg = make_config(
        str(manifest), model={"version": "mine", "versions": {"mine": mine}}, index={"enabled": True}
    )
    run(cfg)
    other = {**mine, "interpolation": "bilinear"}  # another preprocessing under the same name
    redefined = make_config(str(manifest), model={"version": "mine", "versions": {"mine": other}})
    with pytest.raises(ConfigError, match=r"interpolation.*bicubic.*bilinear"):
        run(redefined)
    from embedding.api import search

    with pytest.raises(ConfigError, match="another model"):
        search("a red circle", redefined)
    wide = make_config(str(manifest), model={"version": "wide", "versions": {"wide": {**mine, "dim": 512}}})
    with pytest.raises(ConfigError, match=r"512.*1024"):
        run(wide)
    assert not (Path(cfg.output.root) / "embeddings" / "model_version=wide").exists()
    overwrite = make_config(
        str(manifest), model={"version": "mine", "versions": {"mine": other}}, run={"mode": "overwrite"}
    )
    assert run(overwrite)["rows"]["embedded"] == 6  # overwrite may change the model


def test_a_second_run_stops_at_once_and_a_dead_runs_lease_is_taken_over(
    tmp_path: Path, sample_dir: Path, make_config, monkeypatch, ray_address: str
) -> None:
    ids, uris = sample_rows(sample_dir, 0, 48)
    manifest = write(tmp_path / "m.parquet", ids, uris)
    root = tmp_path / "out"
    held = {"stage_class": "tests.support.stages:BlockingStage", "batch_size": 8}
    config = write_config(
        tmp_path / "a.yaml",
        str(manifest),
        str(root),
        inference=held,
        run={"lease_timeout_s": 3},
        ray={"address": ray_address},
    )
    # The first run's encoder holds its first batch until this file exists, which it never does: the run
    # is certainly in progress, holding its lease, until the test kills it.
    monkeypatch.setenv("EMBEDDING_TEST_RELEASE", str(tmp_path / "never"))
    first = start_run(config, tmp_path / "a.log")
    lease = root / "_state" / "image" / "model_version=demo" / "lease"
    try:
        deadline = time.monotonic() + 240
        while not lease.exists() and time.monotonic() < deadline:
            assert first.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            time.sleep(0.05)
        holder = json.loads(lease.read_text())["run_id"]
        second = make_config(str(manifest), run={"lease_timeout_s": 3})
        started = time.monotonic()
        with pytest.raises(LeaseHeld, match=holder):
            run(second)
        assert time.monotonic() - started < 5
    finally:
        first.kill()
        first.wait()
        kill_group(first)
    # The killed run's heartbeat has stopped: once it is older than the timeout, the lease is taken over.
    beat = json.loads(lease.read_text())["heartbeat"]
    while time.time() - beat <= 3:
        time.sleep(0.1)
    summary = run(second)
    embedded, errors = outcome_without_index(root)
    assert embedded == set(ids) and not errors and summary["rows"]["in"] == 48


def outcome_without_index(root: Path) -> tuple[set[str], list]:
    emb = pq.read_table(root / "embeddings" / "model_version=demo").column("image_id").to_pylist()
    err = pq.read_table(root / "errors" / "model_version=demo").to_pylist()
    assert len(emb) == len(set(emb))
    return set(emb), err
