"""Planning a run: which manifest rows to process, which are done, and which fail before any fetch.

Every manifest row gets exactly one fate:
- its unit is committed: skipped (or retried, for transient errors in resume mode, all errors with
  --retry-errors), and the unit is re-committed with the retried rows superseding their old error rows;
- no id: InvalidManifestRow; an id seen earlier in the manifest: DuplicateId (the first occurrence wins);
- its id is committed in a unit of an older manifest (an appended or changed file): skipped as done;
- otherwise it is processed.
Rows that fail here still travel through the stream as error rows, so the sink accounts for every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.errors import TRANSIENT_CODES, ErrorCode
from embedding.manifest import IMAGE_ID, TEXT_ID, ManifestFile, Unit, read_column
from embedding.outputs import Partition
from embedding.sink import UnitWork

# Errors that come from the manifest itself: retrying them cannot change the outcome.
MANIFEST_CODES = frozenset({ErrorCode.INVALID_MANIFEST_ROW, ErrorCode.DUPLICATE_ID})


@dataclass
class PlanCounts:
    rows_in: int = 0
    skipped_done: int = 0
    retried: int = 0
    new: int = 0
    units_total: int = 0
    units_skipped: int = 0


@dataclass
class Plan:
    kind: str
    units: list[Unit]
    work: dict[str, UnitWork]
    reads: list[dict]  # one descriptor per unit with rows to read: a read task (see pipeline.read_units)
    counts: PlanCounts = field(default_factory=PlanCounts)


def _ids(files: list[ManifestFile], kind: str, storage_options: dict) -> tuple[pa.Array, np.ndarray]:
    """All ids of the manifest in order, and whether each row is the first occurrence of its id."""
    column = IMAGE_ID if kind == "image" else TEXT_ID
    chunks = [read_column(f, column, storage_options).cast(pa.string()) for f in files]
    ids = pa.chunked_array([c for chunked in chunks for c in chunked.chunks], pa.string()).combine_chunks()
    positions = pa.array(np.arange(len(ids), dtype=np.int64))
    firsts = pa.table({"id": ids, "pos": positions}).group_by("id").aggregate([("pos", "min")])
    first_pos = firsts.column("pos_min").to_numpy()
    is_first = np.zeros(len(ids), dtype=bool)
    is_first[first_pos] = True
    return ids, is_first


def _retry_rows(partition: Partition, markers: dict[str, dict], retry_errors: bool) -> dict[str, pa.Table]:
    """Error rows to retry, per committed unit: transient ones, or every non-manifest one."""
    wanted = {
        u
        for u, m in markers.items()
        if any(
            (retry_errors or c in TRANSIENT_CODES) and c not in MANIFEST_CODES for c in m["errors_by_code"]
        )
    }
    if not wanted:
        return {}
    errors = partition.read(partition.errors_table, units=sorted(wanted))
    codes = errors.column("error_code").to_pylist()
    keep = [(retry_errors or c in TRANSIENT_CODES) and c not in MANIFEST_CODES for c in codes]
    retry = errors.filter(pa.array(keep))
    return {u: retry.filter(pc.equal(retry.column("unit_id"), u)) for u in wanted}


def _done_elsewhere(partition: Partition, markers: dict[str, dict], current: set[str]) -> pa.Array:
    """Ids committed in units that are not part of the current manifest (older versions of it)."""
    stale = sorted(set(markers) - current)
    if not stale:
        return pa.array([], pa.string())
    id_col = "image_id" if partition.kind == "image" else "text_id"
    embedded = partition.read(partition.embeddings_table, columns=[id_col], units=stale)
    errors = partition.read(partition.errors_table, columns=[id_col, "error_code"], units=stale)
    if errors.num_rows:
        errors = errors.filter(
            pc.invert(pc.is_in(errors.column("error_code"), pa.array(sorted(MANIFEST_CODES))))
        )
    parts = [t.column(id_col) for t in (embedded, errors) if t.num_rows]
    return pa.chunked_array(parts, pa.string()).combine_chunks() if parts else pa.array([], pa.string())


def _descriptor(unit: Unit, rows: list[int], preset: dict[int, list]) -> dict:
    """What a read task needs to know of one unit: which rows to emit, and their preset errors."""
    return {
        "unit_id": unit.unit_id,
        "source_file": unit.file.uri,
        "folder": unit.file.folder,
        "start": unit.start,
        "stop": unit.stop,
        "rows": rows,
        "preset": {str(k): v for k, v in preset.items()},
    }


def restrict(reads: list[dict], missing: dict[str, set[int]]) -> list[dict]:
    """The descriptors again, with only the rows that are still missing."""
    out = []
    for unit in reads:
        rows = sorted(missing.get(unit["unit_id"], ()))
        if rows:
            preset = {str(r): unit["preset"][str(r)] for r in rows if str(r) in unit["preset"]}
            out.append({**unit, "rows": rows, "preset": preset})
    return out


def make_plan(
    kind: str,
    files: list[ManifestFile],
    units: list[Unit],
    partition: Partition,
    markers: dict[str, dict],
    retry_errors: bool,
    storage_options: dict,
) -> Plan:
    """Decide the fate of every manifest row (see the module docstring)."""
    ids, is_first = _ids(files, kind, storage_options)
    valid = pc.and_(pc.is_valid(ids), pc.greater(pc.utf8_length(pc.fill_null(ids, "")), 0)).to_numpy(
        zero_copy_only=False
    )
    done = pc.is_in(ids, value_set=_done_elsewhere(partition, markers, {u.unit_id for u in units}))
    done = done.to_numpy(zero_copy_only=False)
    retries = _retry_rows(partition, markers, retry_errors)
    counts = PlanCounts(rows_in=len(ids), units_total=len(units))
    work: dict[str, UnitWork] = {}
    reads: list[dict] = []
    offsets = np.cumsum([0] + [f.num_rows for f in files])
    file_offset = {f.uri: int(o) for f, o in zip(files, offsets, strict=False)}
    for unit in units:
        base = file_offset[unit.file.uri]
        if unit.unit_id in markers:
            retry = retries.get(unit.unit_id)
            if retry is None or retry.num_rows == 0:
                counts.units_skipped += 1
                counts.skipped_done += unit.num_rows
                continue
            rows = sorted(retry.column("row_index").to_pylist())
            old = partition.read(partition.errors_table, units=[unit.unit_id]).drop_columns(["unit_id"])
            attempts = dict(
                zip(retry.column("row_index").to_pylist(), retry.column("attempts").to_pylist(), strict=True)
            )
            kept_errors = old.filter(pc.invert(pc.is_in(old.column("row_index"), pa.array(rows, pa.int64()))))
            kept = partition.read(partition.embeddings_table, units=[unit.unit_id]).drop_columns(["unit_id"])
            work[unit.unit_id] = UnitWork(unit, set(rows), kept_embeddings=kept, kept_errors=kept_errors)
            reads.append(_descriptor(unit, rows, {r: [None, None, attempts[r]] for r in rows}))
            counts.retried += len(rows)
            counts.skipped_done += unit.num_rows - len(rows)
            continue
        rows, preset = [], {}
        for row in range(unit.start, unit.stop):
            g = base + row
            if not valid[g]:
                preset[row] = [ErrorCode.INVALID_MANIFEST_ROW.value, "the row has no id", 0]
            elif not is_first[g]:
                preset[row] = [
                    ErrorCode.DUPLICATE_ID.value,
                    f"id {ids[g].as_py()!r} appears earlier in the manifest",
                    0,
                ]
            elif done[g]:
                counts.skipped_done += 1
                continue
            else:
                counts.new += 1
            rows.append(row)
        work[unit.unit_id] = UnitWork(unit, set(rows))
        if rows:
            reads.append(_descriptor(unit, rows, preset))
    return Plan(kind=kind, units=units, work=work, reads=reads, counts=counts)
