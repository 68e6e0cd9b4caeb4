"""Row fates: which rows of the units to write are duplicates, have no id, or adopt an earlier embedding.

The work is partitioned by a hash of the id, so each bucket holds every row of its ids and is decided on its
own, by plain vectorised Arrow code that runs in a Ray task (embedding.job.plan schedules it) or in-process:

1. `manifest_part`: the ids of one manifest file's rows to plan, with their positions, split into buckets;
2. `committed_part`: the ids committed in the partition's units, split the same way;
3. `decide`: per bucket, the fate of every planned row (the module docstring of embedding.job.plan lists
them).

Only the exceptions leave a bucket (a row that is simply processed needs no record), as a table sorted by
position; a read task takes the slice of its rows
(embedding.stages.contract.exceptions_in). A position is `file_index << 40 | row`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding.errors import ErrorCode
from embedding.stages.contract import ADOPT, EXCEPTIONS, ROW_BITS, position
from embedding.store.files import filesystem
from embedding.store.manifest import ManifestFile, open_parquet
from embedding.store.partition import FRAMES_TABLE

CURRENT, SUPERSEDED = 0, 1
_PRIME = np.uint64(1099511628211)


def bucket_of(ids: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """A stable hash of each id (the same in every process and run) modulo n; null counts as ""."""
    ids = pc.fill_null(ids.cast(pa.large_string()), "")
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    count = len(ids)
    if n == 1 or count == 0:
        return np.zeros(count, np.int64)
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset : ids.offset + count + 1]
    base = int(offsets[0])
    data = np.frombuffer(ids.buffers()[2], np.uint8)[base : int(offsets[-1])] if offsets[-1] > base else b""
    data = np.asarray(np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data)
    rel = offsets - base
    lengths = np.diff(rel)
    # Polynomial hash of the bytes (FNV prime powers by position), then a 64-bit finaliser.
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(rel[:-1], lengths)
    weights = np.cumprod(np.full(int(lengths.max(initial=0)), _PRIME, np.uint64), dtype=np.uint64)
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        nonempty = lengths > 0
        if nonempty.any():
            terms = (data.astype(np.uint64) + np.uint64(1)) * weights[pos]
            h[nonempty] = np.add.reduceat(terms, rel[:-1][nonempty])
        h ^= lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
    return (h % np.uint64(n)).astype(np.int64)


def split(table: pa.Table, n: int) -> list[pa.Table]:
    """The rows of a table with an `id` column, in n buckets by the id's hash."""
    buckets = bucket_of(table.column("id"), n)
    order = np.argsort(buckets, kind="stable")
    counts = np.bincount(buckets, minlength=n)
    ordered = table.take(pa.array(order))
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [ordered.slice(int(starts[b]), int(counts[b])) for b in range(n)]


def manifest_part(
    file: ManifestFile,
    file_index: int,
    ranges: list[tuple[int, int]],
    column: str,
    storage_options: dict,
    n: int,
) -> list[pa.Table]:
    """Stage 1: the (id, pos) of the given row ranges of one manifest file, in n buckets.

    Reads only the id column of the row groups that hold the ranges, each once.
    """
    first, last = file.groups_of(ranges[0][0], ranges[-1][1])
    skipped = sum(file.row_groups[:first])
    parquet = open_parquet(file.uri, storage_options)
    ids = parquet.read_row_groups(list(range(first, last + 1)), columns=[column]).column(column)
    ids = ids.cast(pa.string()).combine_chunks()
    rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])
    table = pa.table({"id": ids.take(pa.array(rows - skipped)), "pos": pa.array(position(file_index, rows))})
    return split(table, n)


@dataclass(frozen=True)
class CommittedUnit:
    unit_id: str
    state: int  # CURRENT (a unit of the manifest being run) or SUPERSEDED (of an older manifest)
    where: str  # where its rows came from, for messages
    embedded: int  # rows in its embeddings file
    failed: int  # rows in its errors file
    frames: int = 0  # rows in its video frames file (image partitions)


def committed_part(
    root: str,
    storage_options: dict,
    tables: tuple[str, str],
    version: str,
    units: list[CommittedUnit],
    n: int,
) -> list[pa.Table]:
    """Stage 1: the ids that committed units hold (embedded, or failed with a code that is not about the
    manifest), with their unit, in n buckets. Failed rows of superseded units are planned again."""
    fs, base = filesystem(root, storage_options)
    id_col = "image_id" if tables[0] == "embeddings" else "text_id"
    parts = []
    for unit in units:
        sources = [(tables[0], id_col, unit.embedded), (tables[1], id_col, unit.failed)]
        sources.append((FRAMES_TABLE, "video_id", unit.frames))
        for table, key, wanted in sources:
            if not wanted or (table == tables[1] and unit.state == SUPERSEDED):
                continue
            path = f"{base}/{table}/model_version={version}/part-{unit.unit_id}.parquet"
            columns = [key] if table != tables[1] else [key, "error_code"]
            data = pq.read_table(path, columns=columns, filesystem=fs)
            if table == FRAMES_TABLE:  # a video's id, once for all its frames
                data = pa.table({id_col: pc.unique(data.column(key))})
            if table == tables[1]:
                manifest_codes = pa.array(
                    [ErrorCode.INVALID_MANIFEST_ROW.value, ErrorCode.DUPLICATE_ID.value]
                )
                data = data.filter(pc.invert(pc.is_in(data.column("error_code"), manifest_codes)))
            ids = pc.drop_null(data.column(id_col)).cast(pa.string())
            size = len(ids)
            parts.append(
                pa.table(
                    {
                        "id": ids,
                        "unit_id": pa.array([unit.unit_id] * size, pa.string()),
                        "state": pa.array(np.full(size, unit.state, np.int8)),
                        "where": pa.array([unit.where] * size, pa.string()),
                    }
                )
            )
    empty = pa.schema(
        [("id", pa.string()), ("unit_id", pa.string()), ("state", pa.int8()), ("where", pa.string())]
    )
    table = pa.concat_tables(parts) if parts else empty.empty_table()
    return split(table, n)


@dataclass
class Decision:
    counts: dict[str, int]  # new, adopted, duplicates, invalid
    exceptions: pa.Table  # EXCEPTIONS, sorted by pos
    adopters: pa.Table  # distinct (pos of the adopting unit's first row, adopt_from)


def _text(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def decide(
    manifest: list[pa.Table], committed: list[pa.Table], file_uris: list[str], unit_sizes: list[int]
) -> Decision:
    """Stage 2: the fates of one bucket's planned rows (see embedding.job.plan)."""
    rows = (
        pa.concat_tables(manifest)
        if manifest
        else pa.table({"id": pa.array([], pa.string()), "pos": pa.array([], pa.int64())})
    )
    held = pa.concat_tables(committed) if committed else None
    out: list[pa.Table] = []
    valid = pc.fill_null(pc.greater(pc.utf8_length(rows.column("id")), 0), False)
    invalid = rows.filter(pc.invert(valid))
    out.append(
        _exceptions(
            invalid.column("pos"), ErrorCode.INVALID_MANIFEST_ROW, _text("the row has no id", len(invalid))
        )
    )
    rows = rows.filter(valid)
    current = held.filter(pc.equal(held.column("state"), CURRENT)) if held is not None else None
    superseded = held.filter(pc.equal(held.column("state"), SUPERSEDED)) if held is not None else None
    duplicates = 0
    if current is not None and current.num_rows:
        found = pc.index_in(rows.column("id"), value_set=current.column("id"))
        hit = pc.is_valid(found)
        dup = rows.filter(hit)
        where = current.column("where").take(pc.drop_null(found))
        message = pc.binary_join_element_wise(
            "id '", dup.column("id"), "' is already committed in ", where, ""
        )
        out.append(_exceptions(dup.column("pos"), ErrorCode.DUPLICATE_ID, message))
        duplicates += dup.num_rows
        rows = rows.filter(pc.invert(hit))
    firsts = rows.group_by("id").aggregate([("pos", "min"), ("pos", "count")])
    repeated = firsts.filter(pc.greater(firsts.column("pos_count"), 1))
    if repeated.num_rows:
        found = pc.index_in(rows.column("id"), value_set=repeated.column("id"))
        first = pc.take(repeated.column("pos_min"), found)
        later = pc.fill_null(pc.not_equal(rows.column("pos"), first), False)
        dup = rows.filter(later)
        first_pos = pc.filter(first, later).to_numpy()
        uris = pa.array(file_uris, pa.string()).take(pa.array(first_pos >> ROW_BITS))
        row_text = pa.array((first_pos & ((1 << ROW_BITS) - 1)).astype(str), pa.string())
        message = pc.binary_join_element_wise(
            "id '", dup.column("id"), "' appears earlier in the manifest: ", uris, " row ", row_text, ""
        )
        out.append(_exceptions(dup.column("pos"), ErrorCode.DUPLICATE_ID, message))
        duplicates += dup.num_rows
        rows = rows.filter(pc.invert(later))
    adopted = pa.table({"pos": pa.array([], pa.int64()), "adopt_from": pa.array([], pa.string())})
    if superseded is not None and superseded.num_rows:
        found = pc.index_in(rows.column("id"), value_set=superseded.column("id"))
        hit = pc.is_valid(found)
        source = superseded.column("unit_id").take(pc.drop_null(found))
        adopted = pa.table({"pos": rows.filter(hit).column("pos"), "adopt_from": source})
        out.append(
            pa.table(
                {
                    "pos": adopted.column("pos"),
                    "code": _text(ADOPT, adopted.num_rows),
                    "message": pa.nulls(adopted.num_rows, pa.string()),
                    "adopt_from": adopted.column("adopt_from"),
                },
                schema=EXCEPTIONS,
            )
        )
    exceptions = pa.concat_tables([t.cast(EXCEPTIONS) for t in out]).sort_by("pos").combine_chunks()
    pos = adopted.column("pos").to_numpy()
    size = np.asarray(unit_sizes, np.int64)[pos >> ROW_BITS]  # the rows per unit of each row's file
    unit_first = (pos >> ROW_BITS << ROW_BITS) | ((pos & ((1 << ROW_BITS) - 1)) // size * size)
    adopters = pa.table(
        {"unit_pos": pa.array(unit_first, pa.int64()), "adopt_from": adopted.column("adopt_from")}
    )
    adopters = adopters.group_by(["unit_pos", "adopt_from"]).aggregate([])
    counts = {
        "invalid": invalid.num_rows,
        "duplicates": duplicates,
        "adopted": adopted.num_rows,
        "new": rows.num_rows - adopted.num_rows,
    }
    return Decision(counts, exceptions, adopters)


def _exceptions(pos: pa.Array, code: ErrorCode, message: pa.Array) -> pa.Table:
    n = len(pos)
    return pa.table(
        {
            "pos": pos,
            "code": _text(code.value, n),
            "message": message,
            "adopt_from": pa.nulls(n, pa.string()),
        },
        schema=EXCEPTIONS,
    )
