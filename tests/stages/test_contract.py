"""The driver-worker contract: read tasks and unit results survive their Arrow form unchanged."""

from __future__ import annotations

import pyarrow as pa

from embedding.stages.contract import (
    RESULT,
    TASKS,
    ReadTask,
    RowCounts,
    StageTime,
    UnitCounts,
    UnitResult,
    UnitTask,
    results_from,
    results_table,
)


def test_read_tasks_round_trip() -> None:
    tasks = [
        ReadTask("s3://b/m-0.parquet", 0, (UnitTask("u0", 0, 32, "new", 32),)),
        ReadTask(
            "/data/m 1.parquet",
            1,
            (UnitTask("u1", 0, 10, "retry", 3), UnitTask("u2", 10, 20, "new", 10, ((12, 12), (15, 17)))),
            isolate=True,
        ),
    ]
    table = ReadTask.table(tasks)
    assert table.schema == TASKS and table.num_rows == 2
    assert ReadTask.from_table(table) == tasks
    assert ReadTask.from_table(table.slice(1, 1))[0].units[1].skips(16)


def test_unit_results_round_trip_as_typed_rows() -> None:
    whole = UnitResult(
        unit_id="u0",
        whole=True,
        attempt="whole-abc",
        rows=32,
        first_row=0,
        last_row=31,
        counts=RowCounts(embedded=29, adopted=1, failed_by_code={"NotFound": 2}),
        marker=UnitCounts(30, 2, 0, 0, {"NotFound": 2}),
        decode=StageTime(1.5, 10.0, 12.0),
        encode=StageTime(0.5, 12.0, 12.5),
        encode_wait_s=0.1,
        write_s=0.02,
    )
    piece = UnitResult("u1", False, "piece-4-def", 1, 4, 4, RowCounts(frames=3, videos=1), None)
    table = results_table([whole, piece])
    assert table.schema == RESULT
    # Typed columns, not JSON text: the counts are a struct with a map of codes.
    assert pa.types.is_struct(table.schema.field("counts").type)
    assert pa.types.is_map(table.schema.field("counts").type.field("failed_by_code").type)
    assert results_from(table) == [whole, piece]


def test_row_counts_add_every_counter() -> None:
    total = RowCounts(embedded=1, failed_by_code={"Timeout": 1})
    total.add_counts(RowCounts(1, 2, 3, 4, 5, {"Timeout": 2, "NotFound": 1}))
    assert total == RowCounts(2, 2, 3, 4, 5, {"Timeout": 3, "NotFound": 1})
