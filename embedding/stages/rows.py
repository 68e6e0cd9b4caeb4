"""The row stream between the pipeline's stages: one Arrow table per batch, plain Arrow types only.

Every manifest row travels as one stream row from reading to the sink, carrying its unit, position and
either its pixels (later its embedding) or an error. Error rows pass through the later stages untouched,
so the sink sees each row exactly once.

Columns: unit_id, source_file, row_index, id, uri | text, the carried columns, error_code, error_message,
stage, attempts, adopt_from (the superseded unit whose embedding of this id the row takes over), unit_rows
(how many stream rows its unit has: the write stage knows when it holds a whole unit) and unit_mode (new or
retry), then width, height,
content_sha256 and pixels (fixed_size_binary of H*W*3 uint8) until the encoder replaces the pixels with
embedding (fixed_size_list<float32, D>), and per-row timing columns (METRIC_PREFIX).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.errors import ErrorCode
from embedding.store.schemas import embedding_type


def pixels_type(size: tuple[int, int]) -> pa.DataType:
    return pa.binary(size[0] * size[1] * 3)


def pending_rows(batch: pa.Table) -> list[int]:
    """Positions of rows still to compute: no error (yet), and not adopted from a superseded unit."""
    todo = pc.is_null(batch.column("error_code"))
    if "adopt_from" in batch.column_names:
        todo = pc.and_(todo, pc.is_null(batch.column("adopt_from")))
    return np.flatnonzero(todo.to_numpy(zero_copy_only=False)).tolist()


def fail_rows(batch: pa.Table, errors: dict[int, tuple[ErrorCode, str]], stage: str) -> pa.Table:
    """Set the error columns of the given rows (position -> (code, message))."""
    if not errors:
        return batch
    columns = {name: batch.column(name).to_pylist() for name in ("error_code", "error_message", "stage")}
    for position, (code, message) in errors.items():
        columns["error_code"][position] = str(code)
        columns["error_message"][position] = message
        columns["stage"][position] = stage
    for name, values in columns.items():
        batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return batch


def pixels_of(batch: pa.Table, size: tuple[int, int]) -> np.ndarray:
    """The pixels column as an (N, H, W, 3) uint8 array, without copying when the batch is one chunk."""
    column = batch.column("pixels").combine_chunks()
    if len(column) == 0:
        return np.zeros((0, size[0], size[1], 3), np.uint8)
    width = column.type.byte_width
    data = np.frombuffer(
        column.buffers()[1], np.uint8, count=width * len(column), offset=column.offset * width
    )
    return data.reshape(len(column), size[0], size[1], 3)


def pixels_array(pixels: list[np.ndarray | None], size: tuple[int, int]) -> pa.Array:
    """Pack per-row pixels (None for error rows, which get zeros) into one fixed-size binary column."""
    frame = np.zeros((len(pixels), size[0], size[1], 3), np.uint8)
    for i, p in enumerate(pixels):
        if p is not None:
            frame[i] = p
    return pa.FixedSizeBinaryArray.from_buffers(pixels_type(size), len(pixels), [None, pa.py_buffer(frame)])


def with_embeddings(batch: pa.Table, rows: list[int], vectors: np.ndarray, dim: int) -> pa.Table:
    """Drop the pixels and add the embedding column: the given rows get their vectors, others zeros."""
    full = np.zeros((batch.num_rows, dim), np.float32)
    if rows:
        full[rows] = vectors
    values = pa.array(full.reshape(-1), pa.float32())
    column = pa.FixedSizeListArray.from_arrays(values, type=embedding_type(dim))
    if "pixels" in batch.column_names:
        batch = batch.drop_columns(["pixels"])
    return batch.append_column("embedding", column)


METRIC_PREFIX = "_m_"


def timing_columns(stage: str, n: int, started: float, ended: float) -> dict[str, pa.Array]:
    """Per-row metric columns: each row's share of the batch's busy time, and the batch's wall span."""
    return {
        f"{METRIC_PREFIX}{stage}_s": pa.array(np.full(n, (ended - started) / max(n, 1))),
        f"{METRIC_PREFIX}{stage}_t0": pa.array(np.full(n, started)),
        f"{METRIC_PREFIX}{stage}_t1": pa.array(np.full(n, ended)),
    }


def append_columns(batch: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    for name, column in columns.items():
        batch = batch.append_column(name, column)
    return batch


def _cell(buffer: pa.Buffer) -> pa.Array:
    """A one-value large_binary array over a buffer, without copying it."""
    offsets = pa.py_buffer(np.array([0, buffer.size], np.int64))
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, buffer])


def pack(tables: list[pa.Table]) -> pa.Table:
    """Stream tables (one per unit, or one per row when isolating) as packed rows: `unit_id` and `rows`,
    the table as Arrow IPC. Ray Data cuts its stream into blocks of one packed row each, so a unit is the
    grain of every stage: one decode task per unit, whole units to the encoder and to the writer."""
    ids, cells = [], []
    for table in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        ids.append(table.column("unit_id")[0].as_py() if table.num_rows else "")
        cells.append(_cell(sink.getvalue()))
    rows = pa.concat_arrays(cells) if cells else pa.array([], pa.large_binary())
    return pa.table({"unit_id": pa.array(ids, pa.string()), "rows": rows})


def unpack(batch: pa.Table) -> list[pa.Table]:
    """The stream tables of a batch of packed rows."""
    return [pa.ipc.open_stream(cell.as_buffer()).read_all() for cell in batch.column("rows")]


def each_unit(batch: pa.Table, process: Callable[[pa.Table], pa.Table]) -> pa.Table:
    """An encoder stage's call: packed units in, `process` over their rows at once, the same units out."""
    units = unpack(batch)
    if not units:
        return pack([])
    rows = process(pa.concat_tables(units))
    offsets = np.cumsum([0] + [u.num_rows for u in units])
    return pack([rows.slice(int(a), int(b - a)) for a, b in itertools.pairwise(offsets)])


def encode_timing(batch: pa.Table, started: float, ended: float, waited: float) -> pa.Table:
    """The encoder's timing columns: its span, and how long it waited for this batch (shared by its rows)."""
    n = batch.num_rows
    return append_columns(
        batch,
        {
            **timing_columns("encode", n, started, ended),
            f"{METRIC_PREFIX}encode_wait_s": pa.array(np.full(n, waited / max(n, 1))),
        },
    )
