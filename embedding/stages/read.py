"""The read stage of the pipeline: the rows of the units to write, with their fates, from the manifest.
Plain functions of Arrow tables: the Ray Data plan in embedding.job.ray_executor runs them in tasks, and
tests call them directly (embedding.stages.decode is the next stage).

A read task reads each row group it needs once and emits one packed row per unit
(embedding.stages.rows.pack), so every unit travels as one block and is decoded by a task of its own on
whichever CPU is free.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.config import Config
from embedding.errors import EmbeddingError, ErrorCode, retryable
from embedding.fetch.uripolicy import SourceSettings, check_inline, resolve_uri
from embedding.redact import strip_userinfo
from embedding.stages.contract import ADOPT, ROW_BITS, ReadTask, UnitTask, exceptions_in, resolve_buckets
from embedding.stages.rows import pack
from embedding.store.manifest import IMAGE_ID, TEXT_ID, open_parquet
from embedding.store.partition import Partition


@dataclass(frozen=True)
class ReadSettings:
    carried: list[str]
    has_uri: bool
    has_inline: bool
    storage_options: dict[str, dict]  # the manifest's (input.storage_options)
    partition: Partition  # the output, for the kept rows of units whose errors are retried
    retry_errors: bool
    source: SourceSettings | None = None  # images: what a manifest may name (None: the default policy)

    @property
    def kind(self) -> str:
        return self.partition.kind


def _columns(settings: ReadSettings) -> tuple[str, list[str]]:
    id_col, body = (IMAGE_ID, ["uri", "image"]) if settings.kind == "image" else (TEXT_ID, ["text"])
    present = [c for c in body if (c != "uri" or settings.has_uri) and (c != "image" or settings.has_inline)]
    return id_col, [id_col, *present, *settings.carried]


def _row_groups(task: ReadTask, settings: ReadSettings, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) of each row group the task's units need, each read once."""
    parquet = open_parquet(task.file_uri, settings.storage_options)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    first = min(u.start for u in task.units)
    last = max(u.stop for u in task.units)
    offset = 0
    for g, size in enumerate(sizes):
        if offset < last and offset + size > first:
            yield offset, parquet.read_row_group(g, columns=columns)
        offset += size


def unit_rows(
    task: ReadTask, settings: ReadSettings, buckets: list[pa.Table]
) -> Iterator[tuple[UnitTask, pa.Table]]:
    """Each unit of a read task with its stream rows (module docstring of embedding.stages.rows)."""
    id_col, columns = _columns(settings)
    groups = _row_groups(task, settings, columns)
    buffer, buffer_start = None, 0  # rows [buffer_start, buffer_start + len(buffer)) of the file
    for unit in sorted(task.units, key=lambda u: u.start):
        while buffer is None or buffer_start + buffer.num_rows < unit.stop:
            offset, table = next(groups)
            if buffer is None or buffer.num_rows == 0:
                buffer, buffer_start = table, offset
            else:
                buffer = pa.concat_tables([buffer, table])
        rows = buffer.slice(unit.start - buffer_start, unit.stop - unit.start)
        buffer, buffer_start = buffer.slice(unit.stop - buffer_start), unit.stop
        if unit.mode == "new":
            exceptions = exceptions_in(buckets, task.file_index, unit.start, unit.stop)
            stream = _stream(rows, np.arange(unit.start, unit.stop), unit, task, id_col, settings, exceptions)
        else:
            picked, attempts = _retry_rows(unit, settings)
            table = rows.take(pa.array(picked - unit.start))
            stream = _stream(table, picked, unit, task, id_col, settings, None, attempts)
        if unit.skip:
            index = stream.column("row_index").to_pylist()
            stream = stream.filter(pa.array([not unit.skips(r) for r in index], pa.bool_()))
        yield unit, stream


def _retry_rows(unit: UnitTask, settings: ReadSettings) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (sorted) and earlier attempts of a committed unit's errors that are retried."""
    partition = settings.partition
    errors = partition.read(partition.errors_table, ["row_index", "error_code", "attempts"], [unit.unit_id])
    codes = errors.column("error_code").to_pylist()
    keep = pa.array([retryable(c, settings.retry_errors) for c in codes], pa.bool_())
    picked = errors.filter(keep).sort_by("row_index")
    return picked.column("row_index").to_numpy(), picked.column("attempts").fill_null(0).to_numpy()


def _stream(
    rows: pa.Table,
    row_index: np.ndarray,
    unit: UnitTask,
    task: ReadTask,
    id_col: str,
    settings: ReadSettings,
    exceptions: pa.Table | None,
    attempts: np.ndarray | None = None,
) -> pa.Table:
    n = rows.num_rows
    code = pa.nulls(n, pa.string())
    message = pa.nulls(n, pa.string())
    adopt = pa.nulls(n, pa.string())
    if exceptions is not None and exceptions.num_rows:
        at = (exceptions.column("pos").to_numpy() & ((1 << ROW_BITS) - 1)) - unit.start
        codes = exceptions.column("code").to_pylist()
        code_list, message_list, adopt_list = [None] * n, [None] * n, [None] * n
        for i, c, m, a in zip(
            at,
            codes,
            exceptions.column("message").to_pylist(),
            exceptions.column("adopt_from").to_pylist(),
            strict=True,
        ):
            if c == ADOPT:
                adopt_list[i] = a
            else:
                code_list[i], message_list[i] = c, m
        code, message, adopt = (pa.array(v, pa.string()) for v in (code_list, message_list, adopt_list))
    columns: dict[str, pa.Array] = {
        "unit_id": pa.array([unit.unit_id] * n, pa.string()),
        "source_file": pa.array([task.file_uri] * n, pa.string()),
        "row_index": pa.array(row_index, pa.int64()),
        "id": rows.column(id_col).cast(pa.string()),
    }
    if settings.kind == "image":
        uris, refused = _resolve_uris(rows, task, settings)
        columns["uri"] = pa.array(uris, pa.string())
        if refused:
            codes, messages = code.to_pylist(), message.to_pylist()
            for i, why in refused.items():
                if codes[i] is None:  # a row's first problem is the one it reports
                    codes[i], messages[i] = ErrorCode.INVALID_MANIFEST_ROW.value, why
            code, message = pa.array(codes, pa.string()), pa.array(messages, pa.string())
        if settings.has_inline:
            columns["image"] = rows.column("image").cast(pa.large_binary())
    else:
        columns["text"] = rows.column("text")
    for name in settings.carried:
        columns[name] = rows.column(name)
    columns["error_code"] = code
    columns["error_message"] = message
    columns["stage"] = pc.if_else(pc.is_valid(code), "manifest", pa.scalar(None, pa.string()))
    columns["attempts"] = pa.array(attempts if attempts is not None else np.zeros(n), pa.int32())
    columns["adopt_from"] = adopt
    columns["unit_rows"] = pa.array(np.full(n, unit.expected), pa.int64())
    columns["unit_mode"] = pa.array([unit.mode] * n, pa.string())
    return pa.table(columns)


def _resolve_uris(rows: pa.Table, task: ReadTask, settings: ReadSettings) -> tuple[list, dict[int, str]]:
    """Each row's URI joined to its manifest's folder and checked against the source policy (refusals by
    row, with the rule that refused them); rows with inline bytes obey the policy's `inline` scheme."""
    n = rows.num_rows
    folder = posixpath.dirname(task.file_uri)
    source = (settings.source or SourceSettings.from_config(Config())).for_manifest(folder)
    raw = rows.column("uri").to_pylist() if settings.has_uri else [None] * n
    inline = rows.column("image").is_valid().to_pylist() if settings.has_inline else [False] * n
    uris: list[str | None] = [None] * n
    refused: dict[int, str] = {}
    for i, (uri, has_bytes) in enumerate(zip(raw, inline, strict=True)):
        try:
            if has_bytes:
                check_inline(source)
            elif uri is not None:
                uris[i] = resolve_uri(uri, folder, source)
        except EmbeddingError as exc:
            refused[i] = exc.message
            uris[i] = strip_userinfo(uri) if isinstance(uri, str) else None
    return uris, refused


def read_units(batch: pa.Table, settings: ReadSettings, buckets: list) -> Iterator[pa.Table]:
    """Ray Data stage: read tasks (rows of embedding.stages.contract.TASKS) in, a packed row per unit out."""
    buckets = resolve_buckets(buckets)
    for task in ReadTask.from_table(batch):
        for _, rows in unit_rows(task, settings, buckets):
            pieces = [rows.slice(i, 1) for i in range(rows.num_rows)] if task.isolate else [rows]
            for piece in pieces:
                yield pack([piece])
