import json
import posixpath
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedding.outputs import Partition, recover_overwrites, replace_with, shadow_partition


def tables(n: int) -> tuple[pa.Table, pa.Table]:
    emb = pa.table({"image_id": [f"i{k}" for k in range(n)]})
    err = pa.table({"image_id": pa.array([], pa.string()), "error_code": pa.array([], pa.string())})
    return emb, err


def test_commit_then_read(tmp_path: Path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    part.commit("u1", *tables(3), {"unit_id": "u1"})
    assert list(part.markers()) == ["u1"]
    assert part.read("embeddings").column("image_id").to_pylist() == ["i0", "i1", "i2"]
    assert (tmp_path / "embeddings" / "model_version=v1" / "part-u1.parquet").is_file()
    assert (tmp_path / "errors" / "model_version=v1" / "part-u1.parquet").is_file()
    assert not (tmp_path / "_state" / "image" / "model_version=v1" / "staging" / "u1").exists()


def test_plain_readers_ignore_state_and_staging(tmp_path: Path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    part.commit("u1", *tables(2), {"unit_id": "u1"})
    staging = Path(part.staging_dir("u2"))
    staging.mkdir(parents=True)
    pq.write_table(tables(5)[0], staging / "embeddings.parquet")
    assert pq.read_table(tmp_path / "embeddings").num_rows == 2


def test_recover_rolls_forward_after_ready_and_drops_before(tmp_path: Path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    # A unit that crashed after READY, with one file already moved.
    ready = Path(part.staging_dir("done"))
    ready.mkdir(parents=True)
    emb, err = tables(4)
    Path(part.table_dir("embeddings")).mkdir(parents=True)
    pq.write_table(emb, part.part_path("embeddings", "done"))
    pq.write_table(err, ready / "errors.parquet")
    (ready / "READY").write_text(json.dumps({"unit_id": "done"}))
    # A unit that crashed while writing.
    partial = Path(part.staging_dir("partial"))
    partial.mkdir(parents=True)
    (partial / "embeddings.parquet").write_bytes(b"half a file")
    assert part.recover() == (1, 1)
    assert list(part.markers()) == ["done"]
    assert part.read("errors").num_rows == 0 and part.read("embeddings").num_rows == 4
    assert not partial.exists()


def test_overwrite_swaps_only_when_complete(tmp_path: Path) -> None:
    target = Partition(str(tmp_path), "image", "v1")
    target.commit("old", *tables(2), {"unit_id": "old"})
    shadow = shadow_partition(target, "run2")
    shadow.commit("new", *tables(3), {"unit_id": "new"})
    recover_overwrites(target)  # an unfinished overwrite run is dropped, the old output stays
    assert list(target.markers()) == ["old"] and not Path(posixpath.dirname(shadow.state_dir)).exists()
    shadow = shadow_partition(target, "run3")
    shadow.commit("new", *tables(3), {"unit_id": "new"})
    replace_with(target, shadow)
    assert list(target.markers()) == ["new"]
    assert target.read("embeddings").num_rows == 3
    assert not (tmp_path / "embeddings" / "model_version=v1" / "part-old.parquet").exists()
