"""Writing units, in the workers: a unit's stream rows become its embeddings and errors tables, staged.

The write stage gets packed units (embedding.stages.rows.pack) from the encoder: whole units, except in the
isolating round, which sends one row at a time. A whole unit is assembled and staged at once; a piece is
staged as it is, and `finalize_unit` merges a unit's pieces once all have arrived. Either way the driver
gets one small typed result per unit or piece (embedding.stages.contract.UnitResult) and commits the unit by
its marker (embedding.store.partition). Both tables are written with explicit schemas of plain Arrow types
and file metadata naming the model version, architecture, weights checksum, preprocessing, package version
and run id.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.redact import strip_userinfo
from embedding.stages.contract import RowCounts, StageTime, UnitCounts, UnitResult, results_table
from embedding.stages.rows import METRIC_PREFIX, unpack
from embedding.store.partition import FRAMES_TABLE, Partition
from embedding.store.schemas import OutputSchemas, conform, model_version_column


@dataclass(frozen=True)
class WriteSettings:
    schemas: OutputSchemas
    partition: Partition
    compression: str


def _collapse_videos(rows: pa.Table) -> pa.Table:
    """A video row's outcome is one: all its frames, or one error row (its first failed frame's error)."""
    if "frame_index" not in rows.column_names:
        return rows
    framed = pc.is_valid(rows.column("frame_index"))
    broken = rows.filter(pc.and_(framed, pc.is_valid(rows.column("error_code"))))
    if broken.num_rows == 0:
        return rows
    videos = pc.unique(broken.column("row_index"))
    doomed = pc.and_(framed, pc.is_in(rows.column("row_index"), videos))
    first = broken.group_by("row_index", use_threads=False).aggregate([("frame_index", "min")])
    errors = broken.join(
        first, keys=["row_index", "frame_index"], right_keys=["row_index", "frame_index_min"]
    )
    errors = errors.set_column(
        errors.schema.get_field_index("frame_index"), "frame_index", pa.nulls(errors.num_rows, pa.int32())
    )
    return pa.concat_tables([rows.filter(pc.invert(doomed)), errors.select(rows.column_names)])


def assemble(rows: pa.Table, settings: WriteSettings) -> dict[str, pa.Table]:
    """A whole unit's stream rows -> its tables (table name -> rows), with adopted rows and, for a unit
    whose errors are retried, its kept rows. Frames are written only when the unit has some."""
    schemas, partition = settings.schemas, settings.partition
    rows = rows.rename_columns([schemas.id_column if n == "id" else n for n in rows.column_names])
    if "uri" in rows.column_names:  # credentials in a URI never reach the outputs
        uris = [strip_userinfo(u) if u else u for u in rows.column("uri").to_pylist()]
        rows = rows.set_column(rows.schema.get_field_index("uri"), "uri", pa.array(uris, pa.string()))
    failed = pc.is_valid(rows.column("error_code"))
    adopted = pc.and_(pc.invert(failed), pc.is_valid(rows.column("adopt_from")))
    good = rows.filter(pc.invert(pc.or_(failed, adopted)))
    good = good.append_column(
        "model_version", model_version_column(good.num_rows, settings.partition.version)
    )
    framed = pc.is_valid(good.column("frame_index")) if "frame_index" in good.column_names else None
    images = good.filter(pc.invert(framed)) if framed is not None else good
    out: dict[str, list[pa.Table]] = {
        partition.embeddings_table: [conform(images, schemas.embeddings())],
        partition.errors_table: [conform(rows.filter(failed), schemas.errors())],
        FRAMES_TABLE: [],
    }
    if framed is not None:
        frames = good.filter(framed).rename_columns(
            ["video_id" if n == schemas.id_column else n for n in good.column_names]
        )
        out[FRAMES_TABLE].append(conform(frames, schemas.video_frames()))
    taken = rows.filter(adopted)
    for source in pc.unique(taken.column("adopt_from")).to_pylist():
        ids = taken.filter(pc.equal(taken.column("adopt_from"), source)).column(schemas.id_column)
        for table, key, schema in _kept_tables(partition, schemas):
            old = _read_part(partition, table, source)
            if old is not None:
                out[table].append(conform(old.filter(pc.is_in(old.column(key), ids)), schema))
    if rows.num_rows and rows.column("unit_mode")[0].as_py() == "retry":
        unit_id = rows.column("unit_id")[0].as_py()
        for table, _, schema in _kept_tables(partition, schemas):
            old = _read_part(partition, table, unit_id)
            if old is not None and table == partition.errors_table:
                old = old.filter(pc.invert(pc.is_in(old.column("row_index"), rows.column("row_index"))))
            if old is not None:
                out[table].insert(0, conform(old, schema))
    tables = {name: pa.concat_tables(parts) for name, parts in out.items() if parts}
    tables[partition.errors_table] = tables[partition.errors_table].sort_by("row_index")
    if FRAMES_TABLE in tables and tables[FRAMES_TABLE].num_rows == 0:
        del tables[FRAMES_TABLE]
    return tables


def _kept_tables(partition: Partition, schemas: OutputSchemas) -> list[tuple[str, str, pa.Schema]]:
    """(table, its id column, its schema) of the tables whose rows a unit can keep or adopt."""
    out = [
        (partition.embeddings_table, schemas.id_column, schemas.embeddings()),
        (partition.errors_table, schemas.id_column, schemas.errors()),
    ]
    if partition.kind == "image":
        out.append((FRAMES_TABLE, "video_id", schemas.video_frames()))
    return out


def _read_part(partition: Partition, table: str, unit_id: str) -> pa.Table | None:
    """A committed unit's file of one table; None when the unit has none (frames are optional)."""
    try:
        return pq.read_table(partition.part_path(table, unit_id), filesystem=partition.fs)
    except FileNotFoundError:
        if table == FRAMES_TABLE:
            return None
        raise


def _timing(rows: pa.Table, stage: str) -> StageTime:
    busy = f"{METRIC_PREFIX}{stage}_s"
    if busy not in rows.column_names or not rows.num_rows:
        return StageTime()
    return StageTime(
        busy_s=float(pc.sum(rows.column(busy)).as_py() or 0.0),
        t0=float(pc.min(rows.column(f"{METRIC_PREFIX}{stage}_t0")).as_py()),
        t1=float(pc.max(rows.column(f"{METRIC_PREFIX}{stage}_t1")).as_py()),
    )


def _encode_wait_s(rows: pa.Table) -> float:
    wait = f"{METRIC_PREFIX}encode_wait_s"
    return float(pc.sum(rows.column(wait)).as_py() or 0.0) if wait in rows.column_names else 0.0


def _counts(rows: pa.Table) -> RowCounts:
    """This run's outcomes of a unit's (or piece's) manifest rows; a video row counts once."""
    failed = rows.filter(pc.is_valid(rows.column("error_code")))
    by_code = {c["values"]: c["counts"] for c in pc.value_counts(failed.column("error_code")).to_pylist()}
    done = rows.filter(pc.is_null(rows.column("error_code")))
    adopted = done.filter(pc.is_valid(done.column("adopt_from")))
    computed = done.filter(pc.is_null(done.column("adopt_from")))
    framed = (
        computed.filter(pc.is_valid(computed.column("frame_index")))
        if "frame_index" in computed.column_names
        else computed.slice(0, 0)
    )
    distinct = pc.count_distinct(rows.column("row_index")).as_py() if rows.num_rows else 0
    retried = distinct if rows.num_rows and rows.column("unit_mode")[0].as_py() == "retry" else 0
    return RowCounts(
        embedded=computed.num_rows - framed.num_rows,
        videos=pc.count_distinct(framed.column("row_index")).as_py() if framed.num_rows else 0,
        frames=framed.num_rows,
        adopted=pc.count_distinct(adopted.column("row_index")).as_py() if adopted.num_rows else 0,
        retried=retried,
        failed_by_code=by_code,
    )


def _rows_span(rows: pa.Table) -> dict[str, Any]:
    """The unit, its manifest rows (a video's frames share one) and their first and last row."""
    index = rows.column("row_index")
    return {
        "unit_id": rows.column("unit_id")[0].as_py(),
        "rows": pc.count_distinct(index).as_py(),
        "first_row": pc.min(index).as_py(),
        "last_row": pc.max(index).as_py(),
    }


def _stage_whole(rows: pa.Table, settings: WriteSettings, started: float, **measured: Any) -> UnitResult:
    """Stage a whole unit's tables; its result, with `measured` (counts and timings) of this run."""
    tables = assemble(rows, settings)
    partition = settings.partition
    attempt = "whole-" + secrets.token_hex(6)
    partition.write_staged(rows.column("unit_id")[0].as_py(), attempt, tables, settings.compression)
    errors = tables[partition.errors_table]
    frames = tables.get(FRAMES_TABLE)
    codes = pc.value_counts(errors.column("error_code")).to_pylist() if errors.num_rows else []
    marker = UnitCounts(
        rows_embedded=tables[partition.embeddings_table].num_rows,
        rows_failed=errors.num_rows,
        rows_frames=frames.num_rows if frames is not None else 0,
        videos=pc.count_distinct(frames.column("video_id")).as_py() if frames is not None else 0,
        errors_by_code={c["values"]: c["counts"] for c in codes},
    )
    return UnitResult(
        **_rows_span(rows),
        whole=True,
        attempt=attempt,
        marker=marker,
        write_s=time.time() - started,
        **measured,
    )


def write_units(batch: pa.Table, settings: WriteSettings) -> pa.Table:
    """Ray Data stage: packed units in; every whole unit staged, and pieces of split units as they are.
    Returns one row of embedding.stages.contract.RESULT per unit or piece."""
    out = []
    for table in unpack(batch):
        if table.num_rows == 0:
            continue
        started = time.time()
        rows = _collapse_videos(table).sort_by("row_index")
        measured: dict[str, Any] = {
            "counts": _counts(rows),
            "decode": _timing(rows, "decode"),
            "encode": _timing(rows, "encode"),
            "encode_wait_s": _encode_wait_s(rows),
        }
        span = _rows_span(rows)
        if span["rows"] == rows.column("unit_rows")[0].as_py():
            out.append(_stage_whole(rows, settings, started, **measured))
            continue
        attempt = f"piece-{span['first_row']}-{secrets.token_hex(6)}"
        keep = [c for c in rows.column_names if c not in ("pixels", "image")]
        settings.partition.write_staged(
            span["unit_id"], attempt, {"rows": rows.select(keep)}, settings.compression
        )
        out.append(
            UnitResult(
                **span, whole=False, attempt=attempt, marker=None, write_s=time.time() - started, **measured
            )
        )
    return results_table(out)


def finalize_unit(
    unit_id: str, pieces: list[str], crashed: pa.Table | None, settings: WriteSettings
) -> UnitResult:
    """Merge a unit's staged pieces (and its rows that crashed every worker) into a whole staged unit; its
    result counts only the crashed rows (the pieces' were counted as they arrived)."""
    started = time.time()
    partition = settings.partition
    parts = [
        pq.read_table(f"{partition.staging_dir(unit_id)}/{attempt}/rows.parquet", filesystem=partition.fs)
        for attempt in pieces
    ]
    if crashed is not None and crashed.num_rows:
        parts.append(crashed)
    rows = pa.concat_tables(parts, promote_options="default").sort_by("row_index")
    counts = _counts(crashed) if crashed is not None and crashed.num_rows else RowCounts()
    return _stage_whole(rows, settings, started, counts=counts)
