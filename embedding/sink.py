"""The sink: gathers stream rows per unit and commits each unit once all of its rows have arrived.

Each unit's good rows go to the embeddings table and its failed rows to the errors table, both written with
explicit schemas of plain Arrow types and file metadata that records the model version, architecture,
weights checksum, preprocessing, package version and run id.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.manifest import Unit
from embedding.outputs import Partition
from embedding.rows import METRIC_PREFIX, embedding_type


@dataclass(frozen=True)
class OutputSchemas:
    """The two tables of one partition; `file_metadata` goes into every Parquet file's schema metadata."""

    kind: str  # image | text
    dim: int
    dtype: str  # float32 | float16
    carried: list[pa.Field]
    file_metadata: dict[str, str]

    @property
    def id_column(self) -> str:
        return "image_id" if self.kind == "image" else "text_id"

    def embeddings(self) -> pa.Schema:
        fields = [
            pa.field(self.id_column, pa.string()),
            pa.field("embedding", embedding_type(self.dim, self.dtype)),
            pa.field("model_version", pa.dictionary(pa.int32(), pa.string())),
        ]
        if self.kind == "image":
            fields += [
                pa.field("uri", pa.string()),
                pa.field("width", pa.int32()),
                pa.field("height", pa.int32()),
                pa.field("content_sha256", pa.string()),
            ]
        else:
            fields.append(pa.field("text", pa.string()))
        return pa.schema(fields + self.carried, metadata=self.file_metadata)

    def errors(self) -> pa.Schema:
        where = pa.field("uri", pa.string()) if self.kind == "image" else pa.field("text", pa.string())
        fields = [
            pa.field(self.id_column, pa.string()),
            where,
            pa.field("error_code", pa.string()),
            pa.field("error_message", pa.string()),
            pa.field("stage", pa.string()),
            pa.field("attempts", pa.int32()),
            pa.field("source_file", pa.string()),
            pa.field("row_index", pa.int64()),
        ]
        return pa.schema(fields, metadata=self.file_metadata)


@dataclass
class UnitWork:
    """What the sink expects for one unit, and what it keeps from an earlier commit of it."""

    unit: Unit
    expected: set[int]  # row indices that will arrive from the stream
    kept_embeddings: pa.Table | None = None  # a re-committed unit keeps its earlier good rows
    kept_errors: pa.Table | None = None  # and its errors that were not retried
    received: list[pa.Table] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.seen >= self.expected


@dataclass
class SinkStats:
    units_committed: int = 0
    rows_embedded: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    write_seconds: float = 0.0
    metrics: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per-row stage timings


class Sink:
    def __init__(
        self,
        partition: Partition,
        schemas: OutputSchemas,
        work: dict[str, UnitWork],
        run_id: str,
        compression: str = "zstd",
    ):
        self.partition = partition
        self.schemas = schemas
        self.work = work
        self.run_id = run_id
        self.compression = compression
        self.stats = SinkStats()

    def commit_empty(self) -> None:
        """Units that expect no stream rows (all skipped or kept) are committed at once."""
        for unit_id in [u for u, w in self.work.items() if w.complete]:
            self._commit(unit_id)

    def add(self, batch: pa.Table) -> None:
        """Take one batch of stream rows; commit every unit it completes."""
        if batch.num_rows == 0:
            return
        for name in [n for n in batch.column_names if n.startswith(METRIC_PREFIX)]:
            self.stats.metrics.setdefault(name, []).append(batch.column(name).to_numpy(zero_copy_only=False))
        units = batch.column("unit_id").to_pylist()
        rows = batch.column("row_index").to_pylist()
        by_unit: dict[str, list[int]] = {}
        for position, (unit_id, row) in enumerate(zip(units, rows, strict=True)):
            work = self.work.get(unit_id)
            if work is None or row in work.seen or row not in work.expected:
                continue  # a row delivered twice (a retried task) is taken once
            work.seen.add(row)
            by_unit.setdefault(unit_id, []).append(position)
        for unit_id, positions in by_unit.items():
            self.work[unit_id].received.append(batch.take(positions))
            if self.work[unit_id].complete:
                self._commit(unit_id)

    def missing(self) -> dict[str, set[int]]:
        """Row indices per uncommitted unit that never arrived (their block failed)."""
        return {u: w.expected - w.seen for u, w in self.work.items()}

    def _commit(self, unit_id: str) -> None:
        started = time.perf_counter()
        work = self.work.pop(unit_id)
        rows = pa.concat_tables(work.received, promote_options="default") if work.received else None
        embeddings, errors = self._split(rows)
        if work.kept_embeddings is not None:
            embeddings = pa.concat_tables([work.kept_embeddings.cast(embeddings.schema), embeddings])
        if work.kept_errors is not None:
            errors = pa.concat_tables([work.kept_errors.cast(errors.schema), errors])
        codes = pc.value_counts(errors.column("error_code")).to_pylist() if errors.num_rows else []
        by_code = {c["values"]: c["counts"] for c in codes}
        marker = {
            "unit_id": unit_id,
            "kind": self.schemas.kind,
            "model_version": self.partition.version,
            "source_file": work.unit.file.uri,
            "file_version": work.unit.file.version,
            "start": work.unit.start,
            "stop": work.unit.stop,
            "rows_embedded": embeddings.num_rows,
            "rows_failed": errors.num_rows,
            "errors_by_code": by_code,
            "run_id": self.run_id,
            "committed_at": time.time(),
            "compression": self.compression,
        }
        self.partition.commit(unit_id, embeddings, errors, marker)
        self.stats.units_committed += 1
        self.stats.rows_embedded += (rows.num_rows - _failed_count(rows)) if rows is not None else 0
        if rows is not None:
            failed = rows.filter(pc.is_valid(rows.column("error_code")))
            for code in failed.column("error_code").to_pylist():
                self.stats.errors_by_code[code] = self.stats.errors_by_code.get(code, 0) + 1
        self.stats.write_seconds += time.perf_counter() - started

    def _split(self, rows: pa.Table | None) -> tuple[pa.Table, pa.Table]:
        emb_schema, err_schema = self.schemas.embeddings(), self.schemas.errors()
        if rows is None or rows.num_rows == 0:
            return emb_schema.empty_table(), err_schema.empty_table()
        rows = rows.rename_columns([self.schemas.id_column if n == "id" else n for n in rows.column_names])
        failed_mask = pc.is_valid(rows.column("error_code"))
        good, bad = rows.filter(pc.invert(failed_mask)), rows.filter(failed_mask)
        n = good.num_rows
        good = good.append_column(
            "model_version",
            pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, np.int32)), pa.array([self.partition.version])
            ),
        )
        return _conform(good, emb_schema), _conform(bad, err_schema)


def _failed_count(rows: pa.Table) -> int:
    return rows.num_rows - rows.column("error_code").null_count


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast the stream columns into an output schema (metadata included)."""
    columns = [table.column(f.name).cast(f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def file_metadata(values: dict[str, Any]) -> dict[str, str]:
    """Parquet key-value metadata: strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in values.items()}
