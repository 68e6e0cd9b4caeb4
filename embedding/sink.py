"""Writing units, in the workers: a unit's stream rows become its embeddings and errors tables, staged.

The write stage gets packed units (embedding.rows.pack) from the encoder: whole units, except in the
isolating round, which sends one row at a time. A whole unit is assembled and staged at once; a piece is
staged as it is, and `finalize_unit` merges a unit's pieces once all have arrived. Either way the driver
gets one small result row per unit or piece (`RESULT`) and commits the unit by its marker
(embedding.outputs). Both tables are written with explicit schemas of plain Arrow types and file metadata
naming the model version, architecture, weights checksum, preprocessing, package version and run id.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.outputs import Partition
from embedding.redact import strip_userinfo
from embedding.rows import METRIC_PREFIX, embedding_type, unpack

STAGES = ("decode", "encode")
RESULT = pa.schema(
    [
        ("unit_id", pa.string()),
        ("whole", pa.bool_()),
        ("attempt", pa.string()),
        ("rows", pa.int64()),
        ("first_row", pa.int64()),
        ("last_row", pa.int64()),
        ("embedded", pa.int64()),  # rows embedded in this run (adopted and kept rows not counted)
        ("adopted", pa.int64()),
        ("retried", pa.int64()),
        ("failed_by_code", pa.string()),  # JSON: this run's failed rows by code
        ("marker", pa.string()),  # JSON: the counts of the unit's final tables (whole units)
        *[(f"{s}_{m}", pa.float64()) for s in STAGES for m in ("busy_s", "t0", "t1")],
        ("encode_wait_s", pa.float64()),
        ("write_s", pa.float64()),
    ]
)


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


@dataclass(frozen=True)
class WriteSettings:
    schemas: OutputSchemas
    root: str
    storage_options: dict
    version: str
    compression: str

    def partition(self) -> Partition:
        return Partition(self.root, self.schemas.kind, self.version, self.storage_options)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast columns into an output schema (metadata included); absent columns are null."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _model_version(n: int, version: str) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([version]))


def assemble(rows: pa.Table, settings: WriteSettings) -> tuple[pa.Table, pa.Table]:
    """A whole unit's stream rows -> its two tables, with adopted rows and (retried units) kept rows."""
    schemas, partition = settings.schemas, settings.partition()
    rows = rows.rename_columns([schemas.id_column if n == "id" else n for n in rows.column_names])
    if "uri" in rows.column_names:  # credentials in a URI never reach the outputs
        uris = [strip_userinfo(u) if u else u for u in rows.column("uri").to_pylist()]
        rows = rows.set_column(rows.schema.get_field_index("uri"), "uri", pa.array(uris, pa.string()))
    failed = pc.is_valid(rows.column("error_code"))
    adopted = pc.and_(pc.invert(failed), pc.is_valid(rows.column("adopt_from")))
    good = rows.filter(pc.invert(pc.or_(failed, adopted)))
    good = good.append_column("model_version", _model_version(good.num_rows, settings.version))
    embeddings = [_conform(good, schemas.embeddings())]
    errors = [_conform(rows.filter(failed), schemas.errors())]
    taken = rows.filter(adopted)
    for source in pc.unique(taken.column("adopt_from")).to_pylist():
        ids = taken.filter(pc.equal(taken.column("adopt_from"), source)).column(schemas.id_column)
        old = _read_part(partition, partition.embeddings_table, source)
        old = old.filter(pc.is_in(old.column(schemas.id_column), ids))
        embeddings.append(_conform(old, schemas.embeddings()))
    if rows.num_rows and rows.column("unit_mode")[0].as_py() == "retry":
        unit_id = rows.column("unit_id")[0].as_py()
        old_emb = _read_part(partition, partition.embeddings_table, unit_id)
        old_err = _read_part(partition, partition.errors_table, unit_id)
        redone = pc.is_in(old_err.column("row_index"), rows.column("row_index"))
        embeddings.insert(0, _conform(old_emb, schemas.embeddings()))
        errors.insert(0, _conform(old_err.filter(pc.invert(redone)), schemas.errors()))
    return pa.concat_tables(embeddings), pa.concat_tables(errors).sort_by("row_index")


def _read_part(partition: Partition, table: str, unit_id: str) -> pa.Table:
    return pq.read_table(partition.part_path(table, unit_id), filesystem=partition.fs)


def _metrics(rows: pa.Table) -> dict[str, float]:
    out: dict[str, float] = {}
    for stage in STAGES:
        busy = f"{METRIC_PREFIX}{stage}_s"
        present = busy in rows.column_names and rows.num_rows
        out[f"{stage}_busy_s"] = float(pc.sum(rows.column(busy)).as_py() or 0.0) if present else 0.0
        out[f"{stage}_t0"] = (
            float(pc.min(rows.column(f"{METRIC_PREFIX}{stage}_t0")).as_py()) if present else 0.0
        )
        out[f"{stage}_t1"] = (
            float(pc.max(rows.column(f"{METRIC_PREFIX}{stage}_t1")).as_py()) if present else 0.0
        )
    wait = f"{METRIC_PREFIX}encode_wait_s"
    out["encode_wait_s"] = (
        float(pc.sum(rows.column(wait)).as_py() or 0.0) if wait in rows.column_names else 0.0
    )
    return out


def _counts(rows: pa.Table) -> dict[str, Any]:
    failed = rows.filter(pc.is_valid(rows.column("error_code")))
    by_code = {c["values"]: c["counts"] for c in pc.value_counts(failed.column("error_code")).to_pylist()}
    adopted = rows.num_rows - failed.num_rows - len(pending(rows))
    retried = rows.num_rows if rows.num_rows and rows.column("unit_mode")[0].as_py() == "retry" else 0
    return {
        "embedded": rows.num_rows - failed.num_rows - adopted,
        "adopted": adopted,
        "retried": retried,
        "failed_by_code": json.dumps(by_code, sort_keys=True),
    }


def pending(rows: pa.Table) -> np.ndarray:
    todo = pc.and_(pc.is_null(rows.column("error_code")), pc.is_null(rows.column("adopt_from")))
    return np.flatnonzero(todo.to_numpy(zero_copy_only=False))


def _stage_whole(
    rows: pa.Table, settings: WriteSettings, started: float, base: dict[str, Any]
) -> dict[str, Any]:
    embeddings, errors = assemble(rows, settings)
    partition = settings.partition()
    attempt = "whole-" + secrets.token_hex(6)
    partition.write_staged(
        rows.column("unit_id")[0].as_py(),
        attempt,
        {partition.embeddings_table: embeddings, partition.errors_table: errors},
        settings.compression,
    )
    codes = pc.value_counts(errors.column("error_code")).to_pylist() if errors.num_rows else []
    marker = {
        "rows_embedded": embeddings.num_rows,
        "rows_failed": errors.num_rows,
        "errors_by_code": {c["values"]: c["counts"] for c in codes},
    }
    return {
        **base,
        "whole": True,
        "attempt": attempt,
        "marker": json.dumps(marker),
        "write_s": time.time() - started,
    }


def write_units(batch: pa.Table, settings: WriteSettings) -> pa.Table:
    """Ray Data stage: packed units in; every whole unit staged, and pieces of split units as they are."""
    out = []
    for table in unpack(batch):
        if table.num_rows == 0:
            continue
        started = time.time()
        unit_id = table.column("unit_id")[0].as_py()
        rows = table.sort_by("row_index")
        index = rows.column("row_index")
        base = {
            "unit_id": unit_id,
            "rows": rows.num_rows,
            "first_row": pc.min(index).as_py(),
            "last_row": pc.max(index).as_py(),
            **_counts(rows),
            **_metrics(rows),
        }
        if rows.num_rows == rows.column("unit_rows")[0].as_py():
            out.append(_stage_whole(rows, settings, started, base))
            continue
        attempt = f"piece-{base['first_row']}-{secrets.token_hex(6)}"
        keep = [c for c in rows.column_names if c not in ("pixels", "image")]
        settings.partition().write_staged(unit_id, attempt, {"rows": rows.select(keep)}, settings.compression)
        out.append(
            {**base, "whole": False, "attempt": attempt, "marker": None, "write_s": time.time() - started}
        )
    return pa.Table.from_pylist(out, schema=RESULT)


def finalize_unit(unit_id: str, pieces: list[str], crashed: pa.Table | None, settings: WriteSettings) -> dict:
    """Merge a unit's staged pieces (and its rows that crashed every worker) into a whole staged unit."""
    started = time.time()
    partition = settings.partition()
    parts = [
        pq.read_table(f"{partition.staging_dir(unit_id)}/{attempt}/rows.parquet", filesystem=partition.fs)
        for attempt in pieces
    ]
    if crashed is not None and crashed.num_rows:
        parts.append(crashed)
    rows = pa.concat_tables(parts, promote_options="default").sort_by("row_index")
    base = {
        "unit_id": unit_id,
        "rows": rows.num_rows,
        "first_row": pc.min(rows.column("row_index")).as_py(),
        "last_row": pc.max(rows.column("row_index")).as_py(),
        **(_counts(crashed) if crashed is not None and crashed.num_rows else _zero_counts()),
        **dict.fromkeys(
            [f"{s}_{m}" for s in STAGES for m in ("busy_s", "t0", "t1")] + ["encode_wait_s"], 0.0
        ),
    }
    return _stage_whole(rows, settings, started, base)


def _zero_counts() -> dict[str, Any]:
    return {"embedded": 0, "adopted": 0, "retried": 0, "failed_by_code": "{}"}


def file_metadata(values: dict[str, Any]) -> dict[str, str]:
    """Parquet key-value metadata: strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in values.items()}
