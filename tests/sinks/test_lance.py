"""LanceDB as a sink, in a local folder and on a local S3 server (moto): a delivery's table equals the
Parquet tables, each id is held once whatever kill came in between, retirements and changed units follow
the committed ones, another version's vectors are refused, and its search finds what exact search does."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import yaml

from embedding.config_sinks import LanceSinkConfig
from embedding.errors import ConfigError, SinkError
from embedding.sinks.deliver import deliver
from embedding.sinks.lance import LanceSink
from embedding.store.partition import Partition
from tests.index.conftest import clustered, write_embeddings
from tests.sinks.conftest import sink_config
from tests.support.runs import job_env

DIM = 64
TABLE = "embeddings_demo"


def _lake(uri: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "lance", "name": "lake", "uri": uri, **extra}


def _db(uri: str, storage_options: dict[str, str] | None = None) -> Any:
    return lancedb.connect(uri, storage_options=storage_options or {})


def _table(uri: str, storage_options: dict[str, str] | None = None) -> dict[str, tuple]:
    """id -> (vector, caption, tags, unit_id) of the sink's table; each id must be held once."""
    table = _db(uri, storage_options).open_table(TABLE).to_arrow()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id is held twice"
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return {
        i: (v, c, t, u)
        for i, v, c, t, u in zip(
            ids,
            vectors,
            table.column("caption").to_pylist(),
            table.column("tags").to_pylist(),
            table.column("unit_id").to_pylist(),
            strict=True,
        )
    }


def _parquet(root: Path | str, storage_options: dict | None = None) -> dict[str, tuple]:
    table = Partition(str(root), "image", "demo", storage_options or {}).read("embeddings")
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return {
        i: (v, c, t, u)
        for i, v, c, t, u in zip(
            table.column("image_id").to_pylist(),
            vectors,
            table.column("caption").to_pylist(),
            table.column("tags").to_pylist(),
            table.column("unit_id").to_pylist(),
            strict=True,
        )
    }


def _assert_same(uri: str, root: Path | str, **options: Any) -> None:
    held, truth = _table(uri, options.get("lance")), _parquet(root, options.get("parquet"))
    assert set(held) == set(truth)
    for image_id, (vector, caption, tags, unit) in truth.items():
        assert np.allclose(held[image_id][0], vector, atol=1e-6)
        assert held[image_id][1:] == (caption, tags, unit)


def _units(uri: str) -> dict[str, int]:
    records = _db(uri).open_table(f"{TABLE}_units").to_arrow()
    return dict(zip(records.column("unit_id").to_pylist(), records.column("rows").to_pylist(), strict=True))


def test_units_are_written_once_retired_and_changed(tmp_path: Path) -> None:
    root, uri = tmp_path / "out", str(tmp_path / "lance")
    write_embeddings(root, clustered(300, DIM, seed=1), units=3)
    cfg = sink_config(root, _lake(uri))
    done = deliver(cfg, on_ray=False)
    assert done["lake"]["written_units"] == 3 and done["lake"]["written_rows"] == 300
    _assert_same(uri, root)
    again = deliver(cfg, on_ray=False)["lake"]
    assert (again["written_units"], again["retired_units"]) == (0, 0)  # it holds them all

    Partition(str(root), "image", "demo").retire(["unit00000"])
    done = deliver(cfg, on_ray=False)
    assert (done["lake"]["retired_units"], done["lake"]["written_units"]) == (1, 0)
    _assert_same(uri, root)
    assert _units(uri) == {"unit00001": 100, "unit00002": 100}

    # unit00001 committed again (a changed file): 60 rows, ids that unit00000 held before, new vectors
    write_embeddings(root, clustered(60, DIM, seed=2), units=1, first=1)
    done = deliver(cfg, on_ray=False)
    assert (done["lake"]["retired_units"], done["lake"]["written_units"]) == (0, 1)
    _assert_same(uri, root)
    assert _units(uri) == {"unit00001": 60, "unit00002": 100}
    metadata = _db(uri).open_table(TABLE).schema.metadata
    assert metadata[b"embedding.model_version"] == b"demo"


@pytest.mark.parametrize("point", ["sink.in_unit", "sink.after_unit"])
def test_a_kill_inside_or_between_units_leaves_each_id_once(tmp_path: Path, crash_at, point: str) -> None:
    root, uri = tmp_path / "out", str(tmp_path / "lance")
    write_embeddings(root, clustered(400, DIM, seed=3), units=4)
    cfg = sink_config(root, _lake(uri))
    deliver(cfg, on_ray=False)
    # Every unit changes (110 rows now: ids move between units), and the process dies in the 2nd one
    # (its rows written, not its record) or after it.
    write_embeddings(root, clustered(440, DIM, seed=4), units=4)
    crash_at(point, 2)
    with pytest.raises(SinkError, match=point):
        deliver(cfg, on_ray=False)
    _table(uri)  # each id once
    done = deliver(cfg, on_ray=False)["lake"]
    # in_unit: the 2nd unit's rows without its record, so it is written again; after_unit: recorded
    assert done["written_units"] == (3 if point == "sink.in_unit" else 2)
    _assert_same(uri, root)


@pytest.mark.slow  # a process of its own (embedding index, embedding sink, a job)
def test_a_killed_process_leaves_each_id_once(tmp_path: Path) -> None:
    """A real SIGKILL (`embedding sink` armed to kill itself) in the middle of a unit, then a rerun."""
    root, uri = tmp_path / "out", str(tmp_path / "lance")
    write_embeddings(root, clustered(400, DIM, seed=5), units=4)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(sink_config(root, _lake(uri)).model_dump(mode="json")))
    command = [sys.executable, "-m", "embedding.cli", "sink", str(config)]
    killed = subprocess.run(
        command, env={**job_env(), "EMBEDDING_FAULTS": "sink.in_unit:3"}, capture_output=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(_table(uri)) == 300 and set(_units(uri)) == {"unit00000", "unit00001"}
    again = subprocess.run(command, env=job_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "2 units (200 rows) written" in again.stdout, again.stderr[-2000:]
    _assert_same(uri, root)


def test_another_versions_vectors_are_refused(tmp_path: Path) -> None:
    uri = str(tmp_path / "lance")
    write_embeddings(tmp_path / "out", clustered(20, DIM, seed=6), units=1)
    deliver(sink_config(tmp_path / "out", _lake(uri, table="vectors")), on_ray=False)
    other = tmp_path / "other"
    write_embeddings(other, clustered(20, DIM, seed=7), version="2022-04-11", units=1)
    cfg = sink_config(other, _lake(uri, table="vectors"))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"version": "2022-04-11"})})
    with pytest.raises(
        SinkError, match=r"table vectors holds vectors of model version 'demo', not '2022-04-11'"
    ):
        deliver(cfg, on_ray=False)
    assert _db(uri).open_table("vectors").count_rows() == 20  # untouched

    config = LanceSinkConfig(kind="lance", name="lake", uri=uri, table="models")
    LanceSink(config, "demo").prepare({"architecture": "vit-b", "dim": DIM}, _rows(["a"], "u").schema)
    sink = LanceSink(config, "demo")
    with pytest.raises(ConfigError, match=r"table models holds vectors of another model \(architecture"):
        sink.prepare({"architecture": "vit-l", "dim": DIM}, _rows(["a"], "u").schema)
    with pytest.raises(ConfigError, match=r"table models holds vectors of dimension 64, this run's have 8"):
        sink.prepare({}, _rows(["a"], "u", dim=8).schema)
    sink.close()


def _rows(ids: list[str], unit: str, dim: int = DIM, seed: int = 0, dtype: Any = np.float32) -> pa.Table:
    vectors = clustered(len(ids), dim, seed).astype(dtype)
    return pa.table(
        {
            "id": ids,
            "unit_id": [unit] * len(ids),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            "model_version": ["demo"] * len(ids),
            "caption": [f"caption {i}" for i in ids],
        }
    )


def test_quoted_ids_new_columns_empty_units_and_float16(tmp_path: Path) -> None:
    """Ids and unit ids from manifests go into filters as values, never as SQL; a carried column that
    appears later is added; a unit of no rows holds none; float16 vectors are held as float16."""
    sink = LanceSink(LanceSinkConfig(kind="lance", name="lake", uri=str(tmp_path / "lance")), "demo")
    unit = "u') OR unit_id <> ('"
    ids = ["it's", "x' OR '1'='1", "back\\slash", "plain"]
    sink.prepare({}, _rows(ids, unit).schema)
    sink.write(unit, "d1", _rows(ids, unit))
    sink.write("other", "d1", _rows(["o1", "o2"], "other", seed=1))
    sink.write(unit, "d2", _rows(ids[1:3], unit, seed=2))  # the unit changed: two rows are left
    held = sink.tbl.to_arrow()
    assert sorted(held.column("id").to_pylist()) == sorted([*ids[1:3], "o1", "o2"])
    assert sink.held() == {unit: "d2", "other": "d1"}

    extra = _rows(["o1", "o3"], "other", seed=3).append_column("score", pa.array([1.5, 2.5]))
    sink.write("other", "d2", extra)  # schema evolution: score added, null in the rows before
    held = {r["id"]: r for r in sink.tbl.to_arrow().to_pylist()}
    assert set(held) == {*ids[1:3], "o1", "o3"}
    assert held["o1"]["score"] == 1.5 and held[ids[1]]["score"] is None
    sink.write(unit, "d3", _rows(ids, unit, seed=4))  # without score: null there
    assert {r["id"]: r["score"] for r in sink.tbl.to_arrow().to_pylist()}[ids[0]] is None

    sink.write("other", "d3", _rows([], "other"))  # a unit of failures only: no rows
    assert sorted(sink.tbl.to_arrow().column("id").to_pylist()) == sorted(ids)
    sink.retire([unit, "other"])
    assert sink.tbl.count_rows() == 0 and sink.held() == {}
    sink.close()

    half = LanceSink(LanceSinkConfig(kind="lance", name="lake", uri=str(tmp_path / "half")), "demo")
    rows = _rows([f"h{i}" for i in range(50)], "u", dtype=np.float16)
    half.prepare({}, rows.schema)
    half.write("u", "d", rows)
    assert pa.types.is_float16(half.tbl.schema.field("embedding").type.value_type)
    query = rows.column("embedding")[7].values.to_numpy().astype(np.float32)
    best = half.nearest(query / np.linalg.norm(query), 3, {})
    assert best[0][1]["image_id"] == "h7" and best[0][0] == pytest.approx(1.0, abs=1e-3)
    half.close()


def test_search_finds_what_exact_search_finds(tmp_path: Path) -> None:
    from embedding.api import Vector, search

    root, uri = tmp_path / "out", str(tmp_path / "lance")
    vectors = clustered(500, DIM, seed=8)
    ids = write_embeddings(root, vectors, units=4)
    cfg = sink_config(root, _lake(uri))
    deliver(cfg, on_ray=False)
    for query in clustered(5, DIM, seed=9):
        exact = np.argsort(-(vectors @ query), kind="stable")[:10]
        found = search(Vector(query, "demo"), cfg, top=10, sink="lake")
        assert [h.image_id for h in found] == [ids[i] for i in exact]
        assert [h.cosine for h in found] == pytest.approx((vectors @ query)[exact].tolist(), abs=1e-5)
    tagged = search(Vector(vectors[0], "demo"), cfg, top=5, filters={"tags": "odd"}, sink="lake")
    assert len(tagged) == 5 and all("odd" in h.metadata["tags"] for h in tagged)
    quoted = search(Vector(vectors[0], "demo"), cfg, top=5, filters={"caption": "it's"}, sink="lake")
    assert quoted == []
    one = search(
        Vector(vectors[0], "demo"), cfg, top=5, filters={"caption": f"caption {ids[3]}"}, sink="lake"
    )
    assert [h.image_id for h in one] == [ids[3]]
    with pytest.raises(ConfigError, match="filter on 'nope'"):
        search(Vector(vectors[0], "demo"), cfg, filters={"nope": "x"}, sink="lake")


@pytest.mark.parametrize("kind", ["ivf_pq", "hnsw"])
def test_the_vector_index_asked_is_built_once(tmp_path: Path, kind: str, caplog) -> None:
    root, uri = tmp_path / "out", str(tmp_path / "lance")
    vectors = clustered(200, DIM, seed=10)
    write_embeddings(root, vectors, units=2)
    cfg = sink_config(root, _lake(uri, create_index=kind))
    with caplog.at_level(logging.INFO, logger="embedding.sinks.lance"):
        deliver(cfg, on_ray=False)
    indices = _db(uri).open_table(TABLE).list_indices()
    if kind == "ivf_pq":  # 200 rows: too few to train it
        assert indices == [] and "fewer than the 256 an IVF-PQ index needs" in caplog.text
        more = clustered(200, DIM, seed=11)
        write_embeddings(root, more, units=2, first=200)  # ids img-00200.., units unit00200, unit00201
        deliver(cfg, on_ray=False)
        vectors = np.concatenate([vectors, more])
        indices = _db(uri).open_table(TABLE).list_indices()
    assert [i.index_type for i in indices] == ["IvfPq" if kind == "ivf_pq" else "IvfHnswSq"]
    created = indices[0].index_uuid
    Partition(str(root), "image", "demo").retire(["unit00000"])
    deliver(cfg, on_ray=False)
    assert [i.index_uuid for i in _db(uri).open_table(TABLE).list_indices()] == [created]

    sink = LanceSink(cfg.sinks[0], "demo")  # type: ignore[arg-type]
    held = _table(uri)
    names = list(held)
    stored = np.stack([held[n][0] for n in names])
    recall = []
    for query in clustered(10, DIM, seed=12):
        truth = {names[i] for i in np.argsort(-(stored @ query))[:10]}
        recall.append(len(truth & {m["image_id"] for _, m in sink.nearest(query, 10, {})}) / 10)
    sink.close()
    assert np.mean(recall) >= 0.8, recall


def test_on_an_object_store(tmp_path: Path) -> None:
    """The sink's database in a bucket of a local S3 server; its credentials in no message."""
    from tests.support.s3_server import S3Server

    server = S3Server().start()
    try:
        server.create_bucket("lake")
        root = tmp_path / "out"
        write_embeddings(root, clustered(200, DIM, seed=13), units=2)
        secret = "s3cr3t-key-of-the-lake"
        options = {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": secret,
            "aws_endpoint": server.endpoint,
            "aws_region": "us-east-1",
            "allow_http": True,  # as YAML gives it: the sink hands lancedb "true"
        }
        cfg = sink_config(root, _lake("s3://lake/db", storage_options=options))
        done = deliver(cfg, on_ray=False)["lake"]
        assert (done["written_units"], done["written_rows"]) == (2, 200)
        _assert_same("s3://lake/db", root, lance={**options, "allow_http": "true"})
        Partition(str(root), "image", "demo").retire(["unit00000"])
        done = deliver(cfg, on_ray=False)["lake"]
        assert (done["written_units"], done["retired_units"]) == (0, 1)
        _assert_same("s3://lake/db", root, lance={**options, "allow_http": "true"})

        broken = sink_config(root, _lake("s3://no-such-bucket/db", storage_options=options))
        with pytest.raises(SinkError) as failed:
            deliver(broken, on_ray=False)
        assert str(failed.value).startswith(
            "sink lake: cannot open the LanceDB database at s3://no-such-bucket"
        )
        assert "NoSuchBucket" in str(failed.value) and secret not in str(failed.value)
    finally:
        server.stop()
