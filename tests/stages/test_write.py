"""Writing and committing units without Ray: whole units, pieces, retried and adopted rows, repeats.

The stream rows come from the real read stage; the encoder's part is played by synthetic unit vectors, since
these tests check where rows end up, not what their vectors are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.job.commit import Committer
from embedding.job.plan import Plan, make_plan
from embedding.stages.read import ReadSettings, unit_rows
from embedding.stages.rows import pack
from embedding.stages.write import WriteSettings, finalize_unit, write_units
from embedding.store.manifest import find_files, plan_units
from embedding.store.partition import Partition
from embedding.store.schemas import OutputSchemas, embedding_type, file_metadata
from tests.job.test_plan import manifest

DIM = 4


def setup(
    tmp_path: Path, paths: list[Path], retry_errors: bool = False
) -> tuple[Plan, Partition, WriteSettings]:
    files = find_files([str(p) for p in paths], {})
    part = Partition(str(tmp_path / "out"), "image", "v1")
    plan = make_plan("image", files, plan_units(files, 4), part, part.markers(), retry_errors, {})
    schemas = OutputSchemas("image", DIM, "float32", [], file_metadata({"model_version": "v1"}))
    return plan, part, WriteSettings(schemas, part, "zstd")


def encoded(
    plan: Plan, part: Partition, fail: set[str] = frozenset(), retry_errors: bool = False
) -> list[pa.Table]:
    """Each planned unit's stream rows as the encoder would hand them on: vectors, or an error row."""
    settings = ReadSettings([], True, False, {}, part, retry_errors)
    out = []
    for task in plan.reads:
        for _, rows in unit_rows(task, settings, plan.fates):
            n = rows.num_rows
            codes = [
                c if c else ("NotFound" if i in fail else None)
                for c, i in zip(
                    rows.column("error_code").to_pylist(), rows.column("id").to_pylist(), strict=True
                )
            ]
            rows = rows.set_column(
                rows.schema.get_field_index("error_code"), "error_code", pa.array(codes, pa.string())
            )
            vectors = np.tile(np.eye(DIM, dtype=np.float32)[0], (n, 1))
            rows = rows.append_column(
                "embedding",
                pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), type=embedding_type(DIM)),
            )
            out.append(rows)
    return out


def local_finalize(settings: WriteSettings):
    return lambda unit_id, pieces, unit, crashed: finalize_unit(unit_id, pieces, None, settings)


def commit_all(
    plan: Plan, part: Partition, settings: WriteSettings, blocks: list[pa.Table], times: int = 1
) -> Committer:
    committer = Committer(
        part, plan, "run1", {"kind": "image", "model_version": "v1"}, local_finalize(settings)
    )
    for block in blocks:
        for _ in range(times):  # a retried task delivers its block again
            committer.take(write_units(pack([block]), settings))
    committer.retire(sorted(committer.superseded))
    return committer


def read(part: Partition, table: str) -> pa.Table:
    return part.read(table)


def test_whole_units_are_written_by_workers_and_committed_by_markers(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.parquet", ["a", "b", "c", None, "e", "a"])
    plan, part, settings = setup(tmp_path, [path])
    blocks = encoded(plan, part, fail={"c"})
    committer = commit_all(plan, part, settings, blocks, times=2)
    assert not committer.todo and committer.totals.embedded == 3 and committer.totals.units_committed == 2
    assert committer.totals.failed_by_code == {"NotFound": 1, "InvalidManifestRow": 1, "DuplicateId": 1}
    emb, err = read(part, "embeddings"), read(part, "errors")
    assert sorted(emb.column("image_id").to_pylist()) == ["a", "b", "e"]
    assert sorted(err.column("row_index").to_pylist()) == [2, 3, 5]
    assert pq.read_schema(part.part_path("embeddings", plan.reads[0].units[0].unit_id)).field(
        "embedding"
    ).type == (embedding_type(DIM))
    markers = part.markers()
    assert sum(m["rows_embedded"] + m["rows_failed"] for m in markers.values()) == 6


def test_a_unit_split_in_pieces_is_merged_once_all_arrive(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.parquet", ["a", "b", "c", "d"])
    plan, part, settings = setup(tmp_path, [path])
    (block,) = encoded(plan, part)
    pieces = [block.slice(0, 1), block.slice(1, 2), block.slice(1, 2), block.slice(3, 1)]  # one comes twice
    committer = commit_all(plan, part, settings, pieces)
    assert not committer.todo and committer.totals.embedded == 4
    assert sorted(read(part, "embeddings").column("image_id").to_pylist()) == ["a", "b", "c", "d"]
    staging = Path(part.state_dir) / "staging"
    assert not staging.exists() or not list(staging.iterdir())


def test_a_retried_unit_keeps_its_other_rows(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.parquet", ["a", "b", "c", "d"])
    plan, part, settings = setup(tmp_path, [path])
    commit_all(plan, part, settings, encoded(plan, part, fail={"b", "d"}))
    before = part.markers()
    # NotFound is permanent: retried only with --retry-errors; now "b" is found, "d" still missing.
    plan, part, settings = setup(tmp_path, [path], retry_errors=True)
    assert [u.mode for u in plan.todo.values()] == ["retry"]
    committer = commit_all(plan, part, settings, encoded(plan, part, fail={"d"}, retry_errors=True))
    assert committer.totals.retried == 2 and committer.totals.embedded == 1
    assert sorted(read(part, "embeddings").column("image_id").to_pylist()) == ["a", "b", "c"]
    assert read(part, "errors").column("image_id").to_pylist() == ["d"]
    assert part.markers().keys() == before.keys()
    assert all(part.markers()[u].digest != before[u].digest for u in before)


def test_adopted_rows_move_to_the_new_units_and_old_units_retire(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.parquet", ["a", "b", "c", "d", "e"])
    plan, part, settings = setup(tmp_path, [path])
    commit_all(plan, part, settings, encoded(plan, part, fail={"c"}))
    old = set(part.markers())
    manifest(path, ["b", "c", "e", "f"])  # a and d removed, c retried, f new
    plan, part, settings = setup(tmp_path, [path])
    committer = commit_all(plan, part, settings, encoded(plan, part))
    assert committer.totals.adopted == 2 and committer.totals.embedded == 2
    assert not set(part.markers()) & old
    emb = read(part, "embeddings")
    assert sorted(emb.column("image_id").to_pylist()) == ["b", "c", "e", "f"]
    assert read(part, "errors").num_rows == 0
    assert pc.all(pc.equal(emb.column("model_version").cast(pa.string()), "v1")).as_py()
