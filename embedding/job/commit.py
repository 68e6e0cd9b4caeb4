"""The driver's side of writing: it takes one small result row per staged unit (or piece of one) and commits
units by their markers. Its state is per unit, never per row: the units still to commit, the pieces staged
for split units (an interval of rows each), and running totals for the summary.

A superseded unit (of a manifest file that changed or left) is retired as soon as every unit that adopts
rows from it is committed, so an adopted id is never held by two committed units for longer than that; the
rest are retired when the run has committed everything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from embedding.job.plan import Plan
from embedding.stages.contract import (
    TIMED_STAGES,
    ReadTask,
    RowCounts,
    StageTime,
    UnitResult,
    UnitTask,
    results_from,
)
from embedding.store.partition import Partition

log = logging.getLogger(__name__)


@dataclass
class Piece:
    first_row: int
    last_row: int
    rows: int
    attempt: str


@dataclass
class Totals(RowCounts):
    """What the run did, summed over its units' results (the summary's counts and stage timings)."""

    units_committed: int = 0
    busy_s: dict[str, float] = field(default_factory=dict)
    first_t0: dict[str, float] = field(default_factory=dict)
    first_t1: dict[str, float] = field(default_factory=dict)  # the stage's end in the first unit done
    last_t1: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    encode_wait_s: float = 0.0
    write_s: float = 0.0
    commit_s: float = 0.0

    def add(self, result: UnitResult) -> None:
        self.add_counts(result.counts)
        for stage in TIMED_STAGES:
            timing: StageTime = getattr(result, stage)
            if timing.busy_s or timing.t1:
                self.busy_s[stage] = self.busy_s.get(stage, 0.0) + timing.busy_s
                self.rows[stage] = self.rows.get(stage, 0) + result.rows
                self.first_t0[stage] = min(self.first_t0.get(stage, timing.t0), timing.t0)
                self.first_t1[stage] = min(self.first_t1.get(stage, timing.t1), timing.t1)
                self.last_t1[stage] = max(self.last_t1.get(stage, 0.0), timing.t1)
        self.encode_wait_s += result.encode_wait_s
        self.write_s += result.write_s


class Committer:
    def __init__(
        self,
        partition: Partition,
        plan: Plan,
        run_id: str,
        marker_base: dict[str, Any],
        finalize: Callable[[str, list[str], UnitTask, ReadTask | None], UnitResult] | None,
    ):
        self.partition = partition
        self.run_id = run_id
        self.marker_base = marker_base
        self.finalize = finalize  # merges a split unit's pieces in a worker; returns its whole result
        self.todo: dict[str, UnitTask] = dict(plan.todo)
        self.source = {u.unit_id: (task.file_uri, task.file_index) for task in plan.reads for u in task.units}
        self.versions = {f.uri: f.version for f in plan.files}
        self.adopters = {source: set(units) for source, units in plan.adopters.items()}
        self.sources_of: dict[str, set[str]] = {}  # adopting unit -> superseded units it adopts from
        for source, units in plan.adopters.items():
            for unit_id in units:
                self.sources_of.setdefault(unit_id, set()).add(source)
        self.superseded = set(plan.superseded)
        self.pieces: dict[str, list[Piece]] = {}
        self.totals = Totals()

    def take(self, results: pa.Table) -> None:
        """Take a block of result rows from the write stage; commit every unit they complete."""
        for result in results_from(results):
            unit_id = result.unit_id
            if unit_id not in self.todo:
                continue  # delivered twice (a retried task): the first delivery was committed
            if result.whole:
                self.totals.add(result)
                self._commit(unit_id, result)
                continue
            pieces = self.pieces.setdefault(unit_id, [])
            if any(p.first_row <= result.last_row and result.first_row <= p.last_row for p in pieces):
                continue  # overlaps rows already staged (a retried task): taken once
            self.totals.add(result)
            pieces.append(Piece(result.first_row, result.last_row, result.rows, result.attempt))
            if sum(p.rows for p in pieces) == self.todo[unit_id].expected:
                self.complete(unit_id)

    def complete(self, unit_id: str, crashed: ReadTask | None = None) -> None:
        """Merge a unit's pieces (`crashed`: a read task for its rows that no worker survived) and commit."""
        unit = self.todo[unit_id]
        file_uri = self.source[unit_id][0]
        assert self.finalize is not None, "the executor sets how pieces are merged"
        result = self.finalize(unit_id, [p.attempt for p in self.pieces.get(unit_id, [])], unit, crashed)
        self.totals.add(result)
        self.pieces.pop(unit_id, None)
        self._commit(unit_id, result)
        log.debug("unit %s of %s completed from pieces", unit_id, file_uri)

    def _commit(self, unit_id: str, result: UnitResult) -> None:
        started = time.perf_counter()
        unit = self.todo.pop(unit_id)
        file_uri, _ = self.source[unit_id]
        assert result.marker is not None, "a whole unit's result carries its marker"
        marker = {
            **self.marker_base,
            **asdict(result.marker),
            "unit_id": unit_id,
            "source_file": file_uri,
            "file_version": self.versions[file_uri],
            "start": unit.start,
            "stop": unit.stop,
            "run_id": self.run_id,
            "committed_at": time.time(),
        }
        self.partition.commit_staged(unit_id, result.attempt, marker)
        self.totals.units_committed += 1
        for source in self.sources_of.pop(unit_id, ()):
            waiting = self.adopters.get(source)
            if waiting is not None:
                waiting.discard(unit_id)
                if not waiting:
                    self.retire([source])
        self.totals.commit_s += time.perf_counter() - started

    def retire(self, unit_ids: list[str]) -> None:
        """Retire superseded units (their rows are adopted elsewhere, or left the manifest)."""
        doomed = [u for u in unit_ids if u in self.superseded]
        self.partition.retire(doomed)
        self.superseded -= set(doomed)
        for unit_id in doomed:
            self.adopters.pop(unit_id, None)

    def missing(self) -> dict[str, UnitTask]:
        """Units not committed yet, each with the row ranges its staged pieces already hold."""
        out = {}
        for unit_id, unit in self.todo.items():
            skip = tuple((p.first_row, p.last_row) for p in self.pieces.get(unit_id, []))
            out[unit_id] = UnitTask(unit.unit_id, unit.start, unit.stop, unit.mode, unit.expected, skip)
        return out

    def missing_rows(self) -> int:
        return sum(
            u.expected - sum(p.rows for p in self.pieces.get(u.unit_id, [])) for u in self.todo.values()
        )
