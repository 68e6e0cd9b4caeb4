"""Stream rows as the read stage makes them (embedding.stages.rows), for tests of the decode step."""

from __future__ import annotations

import pyarrow as pa


def stream_rows(uris: list[str]) -> pa.Table:
    """One unit's pending rows naming `uris`, in the stream's columns up to `attempts`."""
    n = len(uris)
    return pa.table(
        {
            "unit_id": ["u"] * n,
            "source_file": ["m.parquet"] * n,
            "row_index": pa.array(range(n), pa.int64()),
            "id": [f"id-{i}" for i in range(n)],
            "uri": uris,
            "error_code": pa.nulls(n, pa.string()),
            "error_message": pa.nulls(n, pa.string()),
            "stage": pa.nulls(n, pa.string()),
            "attempts": pa.array([0] * n, pa.int32()),
        }
    )
