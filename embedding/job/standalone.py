"""Runs without Ray: the model in this process, decoding in a pool of worker processes.

For a few thousand rows on one machine, starting Ray, its workers and an encoder actor that imports torch
and loads the model costs more than the embedding itself (docs/benchmarks.md, small). Here decode workers
start at once and take the first units while this process imports torch and loads the model; then each
decoded unit is encoded, written and committed by the same functions and the same commit protocol as on
Ray, so what a run writes, and what a rerun finds, is the same either way. Workers are processes, not
threads: decoding and the model never wait on each other for the GIL, and a decoder that crashes takes
down its worker, not the run.

A bad image is an error row either way. But a stage that fails a whole unit (a decode worker that dies, a
bug, a broken library) stops this executor: `Stopped` is raised, and embedding.job.run sends the units not
committed yet to Ray, whose rounds isolate the row. A run that takes over the lease of a run that died
(a row may have crashed the model in this process) uses Ray from the start.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa

from embedding.config import Config
from embedding.job.commit import Committer
from embedding.job.plan import Plan
from embedding.job.progress import Progress
from embedding.stages.chain import StageSettings
from embedding.stages.contract import ReadTask
from embedding.stages.decode import stage_for
from embedding.stages.read import read_units
from embedding.stages.write import write_units
from embedding.store import faults

log = logging.getLogger(__name__)


# Rows decoded ahead of the model, at least (two units per worker when units are larger): enough that the
# workers never idle while the model loads, and at most about 600 MB of 224 px pixels.
AHEAD_ROWS = 4096


class Stopped(RuntimeError):
    """A stage failed for a whole unit; the units not committed yet are left for Ray."""


def decode_workers(cfg: Config) -> int:
    return cfg.preprocess.concurrency or len(os.sched_getaffinity(0))


def _pool(kind: str, workers: int) -> cf.Executor:
    """Decode worker processes for images (started by a fork server that has imported the decoders once);
    texts are only checked, which a thread does."""
    if kind != "image":
        return cf.ThreadPoolExecutor(1, thread_name_prefix="check")
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["embedding.job.standalone"])
    return cf.ProcessPoolExecutor(workers, mp_context=context)


def _packed_units(plan: Plan, settings: StageSettings) -> Iterator[pa.Table]:
    """Each unit to write, as one packed row (what the read stage emits on Ray)."""
    for task in plan.reads:
        yield from read_units(ReadTask.table([task]), settings.read, list(plan.fates))


def _decode_unit(prepare: Callable, packed: pa.Table, kwargs: dict[str, Any]) -> pa.Table:
    """A worker's task: one unit through the decode stage (a fault point for tests: a worker that dies)."""
    faults.point("standalone.decode")
    return prepare(packed, **kwargs)


def run_standalone(plan: Plan, cfg: Config, settings: StageSettings, committer: Committer) -> dict[str, int]:
    """Decode units in worker processes while the model loads here, then encode, write and commit each unit
    as it is decoded. At most AHEAD_ROWS rows (or two units per worker) are ahead of the model.

    Raises Stopped when a stage fails (a model that cannot load is the config's error, raised as it is).
    Returns rows per round, as embedding.job.ray_executor.run_stream does.
    """
    prepare, kwargs = stage_for(settings.decode, settings.text_limits, settings.decode_function())
    report = {"first": sum(u.expected for u in plan.todo.values()), "isolated": 0, "crashed": 0}
    workers = min(decode_workers(cfg), len(plan.todo))  # never more workers than units
    progress = Progress(committer)
    units = _packed_units(plan, settings)
    pending: set[cf.Future] = set()

    largest = max((u.expected for u in plan.todo.values()), default=1)
    ahead = max(AHEAD_ROWS, 2 * workers * largest)  # rows being decoded or decoded, not yet encoded
    rows: dict[cf.Future, int] = {}

    def submit(pool: cf.Executor) -> None:
        while sum(rows[f] for f in pending) < ahead and (packed := next(units, None)) is not None:
            future = pool.submit(_decode_unit, prepare, packed, kwargs)
            pending.add(future)
            rows[future] = plan.todo[packed.column("unit_id")[0].as_py()].expected

    with _pool(settings.kind, workers) as pool:
        try:
            submit(pool)  # the workers decode while the model loads
        except Exception as exc:
            raise Stopped(f"{type(exc).__name__}: {exc}") from exc
        if "torch" not in sys.modules:
            # The model's threads share the cores with the decode workers: OpenMP's default, spinning while
            # it waits for a thread, then burns the time they need (2,000 photos, 2 cores: 20% faster).
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            encoder = settings.encoder.make()
        except BaseException:
            _cancel(pending)  # the model's error now, not after the units queued for decoding
            raise
        try:
            while pending:
                done, rest = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                pending.clear()
                pending.update(rest)
                decoded = [f.result() for f in done]
                submit(pool)
                for start in range(0, len(decoded), settings.units_per_call):
                    batch = pa.concat_tables(decoded[start : start + settings.units_per_call])
                    committer.take(write_units(encoder(batch), settings.write))
                progress.tick()
        except Exception as exc:
            _cancel(pending)
            raise Stopped(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:  # Ctrl-C: stop at once; what is committed stays, the rest is the next run's
            _cancel(pending)
            raise
    return report


def _cancel(pending: set[cf.Future]) -> None:
    for future in pending:
        future.cancel()


def remaining(plan: Plan, committer: Committer) -> Plan:
    """The plan narrowed to the units not committed yet (for Ray, after Stopped)."""
    reads = [replace(t, units=tuple(u for u in t.units if u.unit_id in committer.todo)) for t in plan.reads]
    return replace(plan, todo=dict(committer.todo), reads=[t for t in reads if t.units])
