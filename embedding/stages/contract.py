"""The contract between the driver and the workers of a run: what a task is told, and what it returns.

    driver --ReadTask (units of one manifest file) + fate buckets--> read -> decode -> encode -> write
    driver <--UnitResult (one per unit, or per piece of a split unit)-- write

Both are typed records: a ReadTask travels as one Arrow struct row (`TASKS`), a UnitResult as one Arrow row
of `RESULT`, and each side turns them back into the dataclasses here; nothing crosses as JSON text. A unit's
rows never reach the driver: a result carries counts, the staged attempt and timings only.

The fates of a run's rows (embedding.job.fates decides them) reach the read stage as exception tables
sorted by position (`EXCEPTIONS`; a position is `file_index << ROW_BITS | row`), which stay in Ray's
object store; a read task takes the slice of its rows (`exceptions_in`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa

ROW_BITS = 40
ADOPT = "adopt"  # not an error: the row's id is embedded in a superseded unit, whose row this unit takes over
EXCEPTIONS = pa.schema(
    [("pos", pa.int64()), ("code", pa.string()), ("message", pa.string()), ("adopt_from", pa.string())]
)


def position(file_index: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(file_index) << np.int64(ROW_BITS)) | rows.astype(np.int64)


def exceptions_in(buckets: list[pa.Table], file_index: int, start: int, stop: int) -> pa.Table:
    """The exceptions of rows [start, stop) of one file, from every bucket, sorted by row."""
    low, high = position(file_index, np.array([start, stop]))
    parts = []
    for table in buckets:
        pos = table.column("pos").to_numpy()
        a, b = np.searchsorted(pos, [low, high])
        if b > a:
            parts.append(table.slice(int(a), int(b - a)))
    if not parts:
        return EXCEPTIONS.empty_table()
    return pa.concat_tables(parts).sort_by("pos")


def resolve_buckets(buckets: list) -> list[pa.Table]:
    """The exception tables, fetched from Ray's object store when they are references."""
    if buckets and not isinstance(buckets[0], pa.Table):
        import ray

        return ray.get(list(buckets))
    return list(buckets)


@dataclass(frozen=True)
class UnitTask:
    """One unit to write in this run."""

    unit_id: str
    start: int
    stop: int
    mode: str  # "new": every row; "retry": only the rows whose errors are retried, the rest kept
    expected: int  # stream rows the unit will receive
    skip: tuple[tuple[int, int], ...] = ()  # row ranges [a, b] already received (isolating round)

    def skips(self, row: int) -> bool:
        return any(a <= row <= b for a, b in self.skip)


_UNIT = pa.struct(
    [
        ("unit_id", pa.string()),
        ("start", pa.int64()),
        ("stop", pa.int64()),
        ("mode", pa.string()),
        ("expected", pa.int64()),
        ("skip", pa.list_(pa.list_(pa.int64(), 2))),
    ]
)
TASKS = pa.schema(
    [
        (
            "task",
            pa.struct(
                [
                    ("file_uri", pa.string()),
                    ("file_index", pa.int64()),
                    ("units", pa.list_(_UNIT)),
                    ("isolate", pa.bool_()),
                ]
            ),
        )
    ]
)


@dataclass(frozen=True)
class ReadTask:
    """One read task: units of one manifest file whose row groups overlap, so each group is read once."""

    file_uri: str
    file_index: int
    units: tuple[UnitTask, ...]
    isolate: bool = False  # emit every row alone (the isolating round: a poison row fails by itself)

    @staticmethod
    def table(tasks: list[ReadTask]) -> pa.Table:
        """Read tasks as rows of `TASKS` (what the read stage is given)."""
        return pa.Table.from_pylist([{"task": asdict(t)} for t in tasks], schema=TASKS)

    @classmethod
    def from_table(cls, table: pa.Table) -> list[ReadTask]:
        out = []
        for row in table.column("task").to_pylist():
            units = tuple(
                UnitTask(**{**u, "skip": tuple((a, b) for a, b in u["skip"] or ())}) for u in row["units"]
            )
            out.append(cls(row["file_uri"], row["file_index"], units, row["isolate"]))
        return out


@dataclass
class RowCounts:
    """This run's outcomes of manifest rows (a unit's, a piece's, or the whole run's); a video row counts
    once. The one place where these counters are named."""

    embedded: int = 0  # image rows embedded in this run (adopted and kept rows not counted)
    videos: int = 0  # video rows embedded in this run
    frames: int = 0  # and their frames
    adopted: int = 0
    retried: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)

    def add_counts(self, other: RowCounts) -> None:
        for f in fields(RowCounts):
            if f.name == "failed_by_code":
                for code, n in other.failed_by_code.items():
                    self.failed_by_code[code] = self.failed_by_code.get(code, 0) + n
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class UnitCounts:
    """The counts of a unit's final tables: what its commit marker records."""

    rows_embedded: int
    rows_failed: int
    rows_frames: int
    videos: int
    errors_by_code: dict[str, int]


@dataclass(frozen=True)
class StageTime:
    """A stage's time on a unit's rows: busy seconds, and its first start and last end (epoch seconds)."""

    busy_s: float = 0.0
    t0: float = 0.0
    t1: float = 0.0


TIMED_STAGES = ("decode", "encode")


@dataclass(frozen=True)
class UnitResult:
    """What the write stage returns for a unit (`whole`) or for a piece of a split unit."""

    unit_id: str
    whole: bool
    attempt: str  # the staging attempt folder holding its files
    rows: int  # manifest rows (a video's frames share one)
    first_row: int
    last_row: int
    counts: RowCounts
    marker: UnitCounts | None  # whole units: the counts of its final tables
    decode: StageTime = StageTime()
    encode: StageTime = StageTime()
    encode_wait_s: float = 0.0
    write_s: float = 0.0


_COUNTS = pa.map_(pa.string(), pa.int64())
_TIME = pa.struct([("busy_s", pa.float64()), ("t0", pa.float64()), ("t1", pa.float64())])
RESULT = pa.schema(
    [
        ("unit_id", pa.string()),
        ("whole", pa.bool_()),
        ("attempt", pa.string()),
        ("rows", pa.int64()),
        ("first_row", pa.int64()),
        ("last_row", pa.int64()),
        (
            "counts",
            pa.struct(
                [(f.name, _COUNTS if f.name == "failed_by_code" else pa.int64()) for f in fields(RowCounts)]
            ),
        ),
        (
            "marker",
            pa.struct(
                [(f.name, _COUNTS if f.name == "errors_by_code" else pa.int64()) for f in fields(UnitCounts)]
            ),
        ),
        *[(stage, _TIME) for stage in TIMED_STAGES],
        ("encode_wait_s", pa.float64()),
        ("write_s", pa.float64()),
    ]
)


def results_table(results: list[UnitResult]) -> pa.Table:
    """Results as rows of `RESULT` (what the write stage returns to the driver)."""
    return pa.Table.from_pylist([asdict(r) for r in results], schema=RESULT)


def _as_dict(pairs: Any) -> dict[str, int]:
    return dict(pairs) if pairs else {}  # an Arrow map reads back as (key, value) pairs


def results_from(table: pa.Table) -> list[UnitResult]:
    out = []
    for row in table.to_pylist():
        counts = RowCounts(**{**row["counts"], "failed_by_code": _as_dict(row["counts"]["failed_by_code"])})
        marker = row["marker"]
        out.append(
            UnitResult(
                **{k: row[k] for k in ("unit_id", "whole", "attempt", "rows", "first_row", "last_row")},
                counts=counts,
                marker=UnitCounts(**{**marker, "errors_by_code": _as_dict(marker["errors_by_code"])})
                if marker
                else None,
                decode=StageTime(**row["decode"]),
                encode=StageTime(**row["encode"]),
                encode_wait_s=row["encode_wait_s"],
                write_s=row["write_s"],
            )
        )
    return out
