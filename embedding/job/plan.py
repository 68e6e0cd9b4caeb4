"""Planning a run: which units to write, and what becomes of every manifest row.

Every row of the current manifest gets exactly one fate:
- its unit is committed: skipped, unless it holds errors to retry (transient ones in resume mode, every one
  but the manifest's own with --retry-errors); then the unit is written again with those rows retried and
  its other rows kept;
- no id: InvalidManifestRow;
- its id is committed in another unit of the current manifest, or appears earlier in the manifest (file
  order, then row order): DuplicateId, naming where the first one lives;
- its id is embedded in a superseded unit (a unit of a file that changed or left the manifest): the row
  adopts that embedding (copied into its own unit, not computed again);
- otherwise it is processed.
Superseded units are retired once the run has committed every unit (or, for one whose rows were adopted, as
soon as its adopters are committed), so the partition ends holding exactly the current manifest's rows.

The driver handles units only. The row fates are found by Ray tasks (embedding.job.fates: ids hash-partitioned
into buckets, one task per bucket) whose exception tables stay in Ray's object store (spilling as Ray does)
until the read tasks take their slices; small runs do the same work in-process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embedding.errors import retryable
from embedding.job import fates
from embedding.stages.contract import ROW_BITS, ReadTask, UnitTask
from embedding.store.manifest import IMAGE_ID, TEXT_ID, ManifestFile, Unit
from embedding.store.partition import Marker, Partition

ROWS_PER_TASK = 2_000_000  # ids a planning task handles at most (a few hundred MB at worst)
ROWS_PER_BUCKET = 2_000_000


@dataclass
class PlanCounts:
    rows_in: int = 0
    skipped_done: int = 0  # rows of committed units that are not written again
    new: int = 0
    adopted: int = 0
    duplicates: int = 0
    invalid: int = 0
    retry_planned: int = 0
    units_total: int = 0
    units_skipped: int = 0
    units_superseded: int = 0


@dataclass
class Plan:
    kind: str
    files: list[ManifestFile]
    todo: dict[str, UnitTask]
    reads: list[ReadTask]
    superseded: list[str]  # committed units not of the current manifest, retired by this run
    adopters: dict[str, set[str]]  # superseded unit -> units that adopt rows from it
    fates: list[Any]  # per bucket: the exception table (an ObjectRef under Ray)
    counts: PlanCounts = field(default_factory=PlanCounts)


class LocalTasks:
    """Runs planning work in this process (small runs, tests)."""

    def submit(self, fn: Callable, *args: Any, num_returns: int = 1) -> Any:
        return fn(*args)

    def get(self, handles: Any) -> Any:
        return handles


class RayTasks:
    """Runs planning work as Ray tasks; results stay in the object store until asked for."""

    def submit(self, fn: Callable, *args: Any, num_returns: int = 1) -> Any:
        import ray

        return ray.remote(fn).options(num_returns=num_returns, num_cpus=1).remote(*args)

    def get(self, handles: Any) -> Any:
        import ray

        return ray.get(handles)


def _retry_rows(marker: Marker, retry_errors: bool) -> int:
    return sum(n for code, n in marker["errors_by_code"].items() if retryable(code, retry_errors))


def _read_tasks(files: list[ManifestFile], units: list[Unit], todo: dict[str, UnitTask]) -> list[ReadTask]:
    tasks: list[ReadTask] = []
    index = {f.uri: i for i, f in enumerate(files)}
    current: list[UnitTask] = []
    current_file, last_group = "", -1
    for unit in units:
        work = todo.get(unit.unit_id)
        if work is None:
            continue
        first, last = unit.file.groups_of(unit.start, unit.stop)
        if current and (unit.file.uri != current_file or first > last_group):
            tasks.append(ReadTask(current_file, index[current_file], tuple(current)))
            current = []
        current.append(work)
        current_file, last_group = unit.file.uri, last
    if current:
        tasks.append(ReadTask(current_file, index[current_file], tuple(current)))
    return tasks


def _where(marker: Marker) -> str:
    body = marker.body
    return f"unit {marker.unit_id} ({body.get('source_file')} rows {body.get('start')}-{body.get('stop')})"


def make_plan(
    kind: str,
    files: list[ManifestFile],
    units: list[Unit],
    partition: Partition,
    markers: dict[str, Marker],
    retry_errors: bool,
    storage_options: dict,
    tasks: LocalTasks | RayTasks | None = None,
) -> Plan:
    """Decide the fate of every manifest row (see the module docstring)."""
    tasks = tasks or LocalTasks()
    counts = PlanCounts(rows_in=sum(f.num_rows for f in files), units_total=len(units))
    current_ids = {u.unit_id for u in units}
    superseded = sorted(set(markers) - current_ids)
    counts.units_superseded = len(superseded)
    todo: dict[str, UnitTask] = {}
    for unit in units:
        marker = markers.get(unit.unit_id)
        if marker is None:
            todo[unit.unit_id] = UnitTask(unit.unit_id, unit.start, unit.stop, "new", unit.num_rows)
            continue
        retry = _retry_rows(marker, retry_errors)
        if retry:
            todo[unit.unit_id] = UnitTask(unit.unit_id, unit.start, unit.stop, "retry", retry)
            counts.retry_planned += retry
        else:
            counts.units_skipped += 1
        counts.skipped_done += unit.num_rows - retry
    plan = Plan(kind, files, todo, _read_tasks(files, units, todo), superseded, {}, [], counts)
    new_units = [u for u in units if u.unit_id in todo and todo[u.unit_id].mode == "new"]
    if new_units:
        sizes = {u.file.uri: u.num_rows for u in units if u.start == 0}  # each file's unit size
        _plan_rows(plan, new_units, partition, markers, current_ids, storage_options, sizes, tasks)
    return plan


def _chunks(items: list, size: Callable[[Any], int], limit: int) -> list[list]:
    """Consecutive items in groups of at most `limit` by size (an item larger than it is a group alone)."""
    groups: list[list] = [[]]
    total = 0
    for item in items:
        if groups[-1] and total + size(item) > limit:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += size(item)
    return [g for g in groups if g]


def _in_buckets(tasks: LocalTasks | RayTasks, fn: Callable, n: int, *args: Any) -> list:
    """Submit a task that returns n buckets; one handle per bucket.

    With num_returns=1 Ray returns one handle to the whole list, so a single bucket is unwrapped in the task.
    """
    if n == 1:
        return [tasks.submit(_only_bucket, fn, *args)]
    return list(tasks.submit(fn, *args, num_returns=n))


def _only_bucket(fn: Callable, *args: Any) -> Any:
    (bucket,) = fn(*args)
    return bucket


def _plan_rows(
    plan: Plan,
    new_units: list[Unit],
    partition: Partition,
    markers: dict[str, Marker],
    current_ids: set[str],
    storage_options: dict,
    unit_sizes: dict[str, int],
    tasks: LocalTasks | RayTasks,
) -> None:
    """Run the two stages of embedding.job.fates over the new units' rows and the committed ids."""
    column = IMAGE_ID if plan.kind == "image" else TEXT_ID
    held = [
        fates.CommittedUnit(
            m.unit_id,
            fates.CURRENT if m.unit_id in current_ids else fates.SUPERSEDED,
            _where(m),
            m["rows_embedded"],
            m["rows_failed"],
            m.body.get("rows_frames", 0),
        )
        for m in markers.values()
    ]
    planned = sum(u.num_rows for u in new_units) + sum(c.embedded + c.failed + c.frames for c in held)
    n = max(1, math.ceil(planned / ROWS_PER_BUCKET))
    index = {f.uri: i for i, f in enumerate(plan.files)}
    manifest_parts, committed_parts = [], []
    by_file: dict[str, list[Unit]] = {}
    for unit in new_units:
        by_file.setdefault(unit.file.uri, []).append(unit)
    for uri, file_units in by_file.items():
        for chunk in _chunks(file_units, lambda u: u.num_rows, ROWS_PER_TASK):
            ranges = [(u.start, u.stop) for u in chunk]
            parts = _in_buckets(
                tasks, fates.manifest_part, n, chunk[0].file, index[uri], ranges, column, storage_options, n
            )
            manifest_parts.append(parts)
    for group in _chunks(held, lambda c: c.embedded + c.failed + c.frames, ROWS_PER_TASK):
        args = (partition.root, partition.storage_options, partition.tables, partition.version, group, n)
        committed_parts.append(_in_buckets(tasks, fates.committed_part, n, *args))
    uris = [f.uri for f in plan.files]
    sizes = [unit_sizes.get(f.uri, 1) for f in plan.files]  # 1: a file of no rows
    decisions = [
        tasks.submit(
            _decide,
            uris,
            sizes,
            len(manifest_parts),
            *[p[b] for p in manifest_parts],
            *[p[b] for p in committed_parts],
            num_returns=3,
        )
        for b in range(n)
    ]
    starts = {(index[u.file.uri], u.start): u.unit_id for u in new_units}
    mask = (1 << ROW_BITS) - 1
    for counts_handle, exceptions, adopters_handle in decisions:
        counts = tasks.get(counts_handle)
        for key in ("new", "adopted", "duplicates", "invalid"):
            setattr(plan.counts, key, getattr(plan.counts, key) + counts[key])
        adopters = tasks.get(adopters_handle)
        for unit_pos, source in zip(
            adopters.column("unit_pos").to_pylist(), adopters.column("adopt_from").to_pylist(), strict=True
        ):
            plan.adopters.setdefault(source, set()).add(starts[(unit_pos >> ROW_BITS, unit_pos & mask)])
        plan.fates.append(exceptions)


def _decide(uris: list[str], unit_sizes: list[int], n_manifest: int, *parts: Any) -> tuple:
    decision = fates.decide(list(parts[:n_manifest]), list(parts[n_manifest:]), uris, unit_sizes)
    return decision.counts, decision.exceptions, decision.adopters
