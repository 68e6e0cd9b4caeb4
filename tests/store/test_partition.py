"""The commit protocol of a partition: atomic files, recovery after a crash at every step, retiring units."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.store.files import read_json, write_atomic
from embedding.store.partition import Partition
from tests.support.faults import Crash


def tables(n: int, start: int = 0) -> tuple[pa.Table, pa.Table]:
    emb = pa.table({"image_id": [f"i{k}" for k in range(start, start + n)]})
    err = pa.table({"image_id": pa.array([], pa.string()), "error_code": pa.array([], pa.string())})
    return emb, err


def test_commit_then_read(tmp_path: Path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    part.commit("u1", *tables(3), {"rows_embedded": 3})
    assert list(part.markers()) == ["u1"]
    assert part.read("embeddings").column("image_id").to_pylist() == ["i0", "i1", "i2"]
    assert (tmp_path / "embeddings" / "model_version=v1" / "part-u1.parquet").is_file()
    assert (tmp_path / "errors" / "model_version=v1" / "part-u1.parquet").is_file()
    assert not (tmp_path / "_state" / "image" / "model_version=v1" / "staging" / "u1").exists()
    assert part.markers()["u1"]["rows_embedded"] == 3


def test_plain_readers_ignore_state_and_staging(tmp_path: Path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    part.commit("u1", *tables(2), {})
    part.write_staged("u2", "a1", {"embeddings": tables(5)[0]}, "zstd")
    assert pq.read_table(tmp_path / "embeddings").num_rows == 2


@pytest.mark.parametrize(
    "point, nth, committed",
    [
        ("commit.ready", 1, False),  # killed while READY was being written: the unit is dropped
        ("commit.after_ready", 1, True),  # after READY: rolled forward
        ("commit.after_move", 1, True),  # between the two moves
        ("commit.after_move", 2, True),
        ("commit.marker", 1, True),  # while the marker was being written
    ],
)
def test_a_crash_at_any_step_is_recovered(
    tmp_path: Path, crash_at, point: str, nth: int, committed: bool
) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    crash_at(point, nth)
    with pytest.raises(Crash):
        part.commit("u1", *tables(4), {"rows_embedded": 4})
    assert "u1" not in part.markers()
    crash_at("none")
    assert part.recover() == ((1, 0) if committed else (0, 1))
    assert list(part.markers()) == (["u1"] if committed else [])
    rows = pq.read_table(tmp_path / "embeddings").num_rows if (tmp_path / "embeddings").exists() else 0
    assert rows == (4 if committed else 0)
    assert not list((tmp_path / "_state" / "image" / "model_version=v1" / "staging").iterdir())
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary file was left behind"


def test_recommitting_a_unit_replaces_its_files(tmp_path: Path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    part.commit("u1", *tables(2), {"rows_embedded": 2})
    first = part.markers()["u1"].digest
    part.commit("u1", *tables(3, start=10), {"rows_embedded": 3})
    assert part.read("embeddings").column("image_id").to_pylist() == ["i10", "i11", "i12"]
    assert part.markers()["u1"].digest != first


def test_an_unreadable_marker_leaves_its_unit_uncommitted(tmp_path: Path, caplog) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    part.commit("u1", *tables(2), {})
    part.commit("u2", *tables(2), {})
    Path(part.marker_path("u2")).write_text("")  # as an older version could leave it
    with caplog.at_level(logging.WARNING):
        assert list(part.markers()) == ["u1"]
    assert "u2" in caplog.text and "uncommitted" in caplog.text


def test_retire_and_orphans(tmp_path: Path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    for u in ("u1", "u2", "u3"):
        part.commit(u, *tables(2), {})
    part.retire(["u1"])
    Path(part.marker_path("u2")).unlink()  # a run killed between a marker's removal and its files'
    assert part.remove_orphans() == 2
    assert list(part.markers()) == ["u3"]
    assert sorted(p.name for p in (tmp_path / "embeddings" / "model_version=v1").iterdir()) == [
        "part-u3.parquet"
    ]


def test_atomic_write_leaves_old_or_new(tmp_path: Path, crash_at) -> None:
    from fsspec.implementations.local import LocalFileSystem

    fs = LocalFileSystem()
    path = str(tmp_path / "x.json")
    write_atomic(fs, path, json.dumps({"v": 1}))
    crash_at("x", 1)
    with pytest.raises(Crash):
        write_atomic(fs, path, json.dumps({"v": 2}), fault="x")
    assert read_json(fs, path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
