"""PostgreSQL with pgvector as a sink, against a real server: a run's table equals its Parquet tables,
each id is held once whatever kill came in between, retirements follow the manifest, a sink added later
or down during the run is finished by `embedding sink`, and another version's vectors are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
import yaml

from embedding.config import Config
from embedding.errors import ConfigError, SinkError
from embedding.job.run import run
from embedding.sinks.deliver import deliver
from embedding.sinks.postgres import as_vector
from embedding.store.partition import Partition
from tests.index.conftest import clustered, write_embeddings
from tests.sinks.conftest import sink_config
from tests.support.runs import job_env, sample_manifest

DIM = 1024
TABLE = "embeddings_demo"


def _pg(url: str, **extra: object) -> dict:
    return {"kind": "postgres", "name": "pg", "url": url, **extra}


def _run_tree(manifest: Path, root: Path, executor: str, sink: dict) -> dict:
    """The config (as YAML holds it) of a demo run of 32-row units, index off, into one sink."""
    return {
        "input": {"manifest": str(manifest), "unit_rows": 32},
        "output": {"root": str(root)},
        "model": {"version": "demo"},
        "inference": {"device": "cpu", "batch_size": 32},
        "index": {"enabled": False},
        "run": {"executor": executor},
        "sinks": [sink],
    }


def _table(url: str, table: str = TABLE) -> dict[str, tuple[np.ndarray, str, list[str] | None]]:
    """id -> (vector, caption, tags) of the sink's table; each id must be held once (primary key)."""
    from pgvector.psycopg import register_vector

    with psycopg.connect(url) as conn:
        register_vector(conn)
        rows = conn.execute(f"SELECT id, embedding, caption, tags FROM {table}").fetchall()
    return {r[0]: (as_vector(r[1]), r[2], r[3]) for r in rows}


def _parquet(root: Path) -> dict[str, tuple[np.ndarray, str, list[str]]]:
    table = Partition(str(root), "image", "demo").read("embeddings")
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return {
        i: (v, c, t)
        for i, v, c, t in zip(
            table.column("image_id").to_pylist(),
            vectors,
            table.column("caption").to_pylist(),
            table.column("tags").to_pylist(),
            strict=True,
        )
    }


def _assert_same(url: str, root: Path) -> None:
    held, truth = _table(url), _parquet(root)
    assert set(held) == set(truth)
    for image_id, (vector, caption, tags) in truth.items():
        assert np.allclose(held[image_id][0], vector, atol=1e-6)
        assert held[image_id][1:] == (caption, tags)


def test_units_are_written_once_retired_and_changed(database: str, tmp_path: Path) -> None:
    root = tmp_path / "out"
    write_embeddings(root, clustered(300, DIM, seed=1), units=3)
    cfg = sink_config(root, _pg(database))
    done = deliver(cfg, on_ray=False)
    assert done["pg"]["written_units"] == 3 and done["pg"]["written_rows"] == 300
    _assert_same(database, root)
    assert deliver(cfg, on_ray=False)["pg"]["written_units"] == 0  # it holds them all

    Partition(str(root), "image", "demo").retire(["unit00000"])
    # unit00001 committed again (a changed file): 60 rows, ids that unit00000 held before
    write_embeddings(root, clustered(60, DIM, seed=2), units=1, first=1)
    done = deliver(cfg, on_ray=False)
    assert (done["pg"]["retired_units"], done["pg"]["written_units"]) == (1, 1)
    _assert_same(database, root)
    with psycopg.connect(database) as conn:
        units = dict(conn.execute(f"SELECT unit_id, rows FROM {TABLE}_units").fetchall())
    assert units == {"unit00001": 60, "unit00002": 100}


@pytest.mark.slow  # a process of its own (embedding index, embedding sink, a job)
def test_a_kill_between_or_inside_units_leaves_each_id_once(database: str, tmp_path: Path) -> None:
    root = tmp_path / "out"
    write_embeddings(root, clustered(400, DIM, seed=3), units=4)
    cfg = sink_config(root, _pg(database))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    command = [sys.executable, "-m", "embedding.cli", "sink", str(config)]
    for point in ("sink.after_unit:2", "sink.in_unit:1"):
        killed = subprocess.run(
            command, env={**job_env(), "EMBEDDING_FAULTS": point}, capture_output=True, text=True, timeout=300
        )
        assert killed.returncode == -9, killed.stderr[-2000:]
        with psycopg.connect(database) as conn:
            held = conn.execute(f"SELECT count(*), count(DISTINCT id) FROM {TABLE}").fetchone()
        assert held is not None and held[0] == held[1] <= 400  # whole units only, each id once
        Partition(str(root), "image", "demo")  # the committed units are untouched
    again = subprocess.run(command, env=job_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    _assert_same(database, root)


def test_another_versions_vectors_are_refused(database: str, tmp_path: Path) -> None:
    root = tmp_path / "out"
    write_embeddings(root, clustered(20, DIM, seed=4), units=1)
    deliver(sink_config(root, _pg(database)), on_ray=False)
    other = tmp_path / "other"
    write_embeddings(other, clustered(20, DIM, seed=5), version="2022-04-11", units=1)
    cfg = sink_config(other, _pg(database, table=TABLE))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"version": "2022-04-11"})})
    with pytest.raises(SinkError, match=r"table embeddings_demo holds vectors of model version 'demo'"):
        deliver(cfg, on_ray=False)


@pytest.mark.slow  # a process of its own (embedding index, embedding sink, a job)
def test_a_run_fills_its_sink_and_one_that_was_down_is_finished_later(
    database: str, sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-password-for-the-sink"
    monkeypatch.setenv("SINK_PASSWORD", secret)
    manifest = sample_manifest(sample_dir, 96, tmp_path / "manifest.parquet")
    # No server at this socket: the run commits, then fails on its sink with one line.
    down = _pg(database.split("?")[0] + "?host=/nonexistent", password_env="SINK_PASSWORD")
    tree = _run_tree(manifest, tmp_path / "out", "standalone", down)
    with pytest.raises(SinkError, match=r"^sink pg: .*`embedding sink` finishes it\)$"):
        run(Config.model_validate(tree))
    root = tmp_path / "out"
    assert len(Partition(str(root), "image", "demo").markers()) == 3  # committed all the same
    saved = "".join(p.read_text() for p in (root / "runs").rglob("*.*") if p.is_file())
    assert secret not in saved and "password_env" in saved

    tree["sinks"] = [_pg(database, password_env="SINK_PASSWORD", create_index="hnsw")]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    done = subprocess.run(
        [sys.executable, "-m", "embedding.cli", "sink", str(config)],
        env={**job_env(), "SINK_PASSWORD": secret},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "3 units (96 rows) written" in done.stdout, done.stderr[-2000:]
    assert secret not in done.stdout + done.stderr
    held = _table(database)
    table = pq.read_table(root / "embeddings" / "model_version=demo")
    assert set(held) == set(table.column("image_id").to_pylist())
    with psycopg.connect(database) as conn:
        indexes = [
            r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [TABLE])
        ]
    assert any("USING hnsw (embedding vector_cosine_ops)" in d for d in indexes), indexes


def test_a_password_in_the_url_is_refused() -> None:
    with pytest.raises(ValueError, match="no password in the URL"):
        Config.model_validate({"sinks": [_pg("postgresql://u:pw@db.example/x")]})
    assert not os.environ.get("PGPASSWORD")
    with pytest.raises(ConfigError, match="password_env, NOPE_NOT_SET, is not set"):
        from embedding.sinks.postgres import connect

        connect(
            Config.model_validate({"sinks": [_pg("postgresql://u@/x", password_env="NOPE_NOT_SET")]}).sinks[0]
        )


def test_searching_the_sink_ranks_as_the_index_does(database: str, tmp_path: Path) -> None:
    from embedding.api import Vector, search
    from embedding.index.build import build_index

    root = tmp_path / "out"
    vectors = clustered(500, DIM, seed=6)
    write_embeddings(root, vectors, units=4)
    cfg = sink_config(root, _pg(database))
    deliver(cfg, on_ray=False)
    build_index(cfg)  # flat: exact, as the sink's table without an index
    for query in clustered(5, DIM, seed=7):
        vector = Vector(query, "demo")
        from_index = search(vector, cfg, top=10)
        from_sink = search(vector, cfg, top=10, sink="pg")
        assert [h.image_id for h in from_sink] == [h.image_id for h in from_index]
        assert [h.cosine for h in from_sink] == pytest.approx([h.cosine for h in from_index], abs=1e-5)
    tagged = search(Vector(vectors[0], "demo"), cfg, top=5, filters={"tags": "odd"}, sink="pg")
    assert tagged and all("odd" in h.metadata["tags"] for h in tagged)
    with pytest.raises(ConfigError, match="filter on 'nope'"):
        search(Vector(vectors[0], "demo"), cfg, filters={"nope": "x"}, sink="pg")


def test_ray_tasks_write_the_units_and_a_shrunk_manifest_retires_rows(
    database: str, sample_dir: Path, tmp_path: Path, ray_local
) -> None:
    """A run on Ray: its tasks write the sink; a rerun over a manifest that lost rows deletes them."""
    whole = sample_manifest(sample_dir, 96, tmp_path / "manifest.parquet")
    tree = _run_tree(whole, tmp_path / "out", "ray", _pg(database))
    first = run(Config.model_validate(tree))
    assert first["sinks"]["pg"]["written_units"] == 3
    _assert_same(database, tmp_path / "out")
    sample_manifest(sample_dir, 40, whole)  # the manifest now holds its first 40 rows
    second = run(Config.model_validate(tree))
    assert second["sinks"]["pg"]["retired_units"] >= 1
    _assert_same(database, tmp_path / "out")
    assert len(_table(database)) == 40


@pytest.mark.slow  # a job in a process of its own
def test_a_run_killed_while_it_delivers_is_finished_by_the_next_run(
    database: str, sample_dir: Path, tmp_path: Path
) -> None:
    manifest = sample_manifest(sample_dir, 96, tmp_path / "manifest.parquet")
    tree = _run_tree(manifest, tmp_path / "out", "standalone", _pg(database))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    command = [sys.executable, "-m", "embedding.cli", "run", str(config)]
    for point in ("sink.in_unit:2", "sink.after_unit:1"):
        killed = subprocess.run(
            command, env={**job_env(), "EMBEDDING_FAULTS": point}, capture_output=True, text=True, timeout=600
        )
        assert killed.returncode == -9, killed.stderr[-2000:]
        with psycopg.connect(database) as conn:
            held = conn.execute(f"SELECT count(*), count(DISTINCT id) FROM {TABLE}").fetchone()
        assert held is not None and held[0] == held[1] and held[0] % 32 == 0  # whole units, each id once
    again = subprocess.run(command, env=job_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    _assert_same(database, tmp_path / "out")


def test_float16_output_is_held_as_halfvec(database: str, tmp_path: Path) -> None:
    import pyarrow as pa

    from embedding.sinks.postgres import PostgresSink

    vectors = clustered(20, DIM, seed=8).astype(np.float16)
    rows = pa.table(
        {
            "id": [f"h{i}" for i in range(20)],
            "unit_id": ["u"] * 20,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            "model_version": ["demo"] * 20,
        }
    )
    config = sink_config(tmp_path, _pg(database)).sinks[0]
    sink = PostgresSink(config, "demo")  # type: ignore[arg-type]
    try:
        sink.prepare({"dim": DIM}, rows.schema)
        sink.write("u", "d", rows)
    finally:
        sink.close()
    reader = PostgresSink(config, "demo")  # type: ignore[arg-type]  # as a search opens it: no prepare
    try:
        best = reader.nearest(vectors[7].astype(np.float32), 3, {})
    finally:
        reader.close()
    assert best[0][1]["image_id"] == "h7" and best[0][0] == pytest.approx(1.0, abs=1e-3)
    with psycopg.connect(database) as conn:
        kind = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'embedding'",
            [TABLE],
        ).fetchone()
    assert kind == (f"halfvec({DIM})",)
