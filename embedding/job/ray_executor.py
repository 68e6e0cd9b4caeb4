"""The Ray Data plan: read units -> fetch, validate, decode, resize (CPU tasks) -> encode (actors) -> write.

    read tasks (one per group of row groups) -> decode (one task per unit) -> encode (actor pool, whole units
    per call) -> write (stage each unit's files)

Between stages a unit travels as one packed row (embedding.stages.rows.pack), and the plan's blocks are made
as small as Ray Data allows, so each block is exactly one unit: the unit is the grain of parallelism,
streaming and writing.

Rows never reach the driver: it gets one small result row per written unit and commits it
(embedding.job.commit). When blocks fail for good (a worker that keeps dying, a lost node), their units are
not committed after the first round; their missing rows are planned again in a second round with one row per
block, so a poison row fails alone, and a row that still kills its worker becomes a `WorkerCrashed` error
row. No row is lost, none is taken twice.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Any

from embedding.config import Config
from embedding.job.commit import Committer
from embedding.job.plan import Plan
from embedding.job.progress import Progress
from embedding.stages.chain import EncodeActor, StageSettings
from embedding.stages.contract import ReadTask, UnitResult, UnitTask
from embedding.stages.decode import stage_for
from embedding.stages.read import ReadSettings, read_units
from embedding.stages.write import WriteSettings, finalize_unit, write_units

log = logging.getLogger(__name__)


def _cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def isolated(batch: Any, stage: Any, **kwargs: Any) -> Any:
    """A stage of the isolating round: the same work under one name (process titles show it)."""
    return stage(batch, **kwargs)


def build_dataset(tasks: list[ReadTask], buckets: list, cfg: Config, settings: StageSettings, isolate: bool):
    """The Ray Data plan for some read tasks; `isolate` sends one row at a time (the second round)."""
    import ray.data

    inference, prep = cfg.inference, cfg.preprocess
    cpus = _cluster_cpus()
    prepare, kwargs = stage_for(settings.decode, settings.text_limits, settings.decode_function())
    # One block per read task, each a typed row (embedding.stages.contract.TASKS).
    # Any: Ray's types for map_batches know no fn_kwargs, and from_arrow's result type narrows too far.
    ds: Any = ray.data.from_arrow([ReadTask.table([t]) for t in tasks] or [ReadTask.table([])])
    read_kwargs = {"settings": settings.read, "buckets": buckets}
    if isolate:
        # A few rows, one at a time, each possibly a poison row. They reserve no CPU (an encoder restarted
        # after a crash can outlive the first round holding one), so the number of worker processes is held
        # by the stages' concurrency instead: reading and decoding fused into one stage of at most CPUs - 1
        # tasks, and one writer, so the round never runs more worker processes than the cluster has CPUs.
        row_tasks = ray.data.TaskPoolStrategy(size=max(1, cpus - 1))
        ds = ds.map_batches(
            isolated,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"stage": read_units, **read_kwargs},
            num_cpus=0,
            compute=row_tasks,
        )
        ds = ds.map_batches(
            isolated,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"stage": prepare, **kwargs},
            num_cpus=0,
            compute=row_tasks,
        )
    else:
        # Reading is light I/O: no CPU reserved (a read task streams its units for as long as decoding
        # takes them), a bounded number at once; and a resource shape unlike decoding's, so Ray Data keeps
        # the two stages apart instead of decoding inside the read task.
        ds = ds.map_batches(
            read_units,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs=read_kwargs,
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=max(1, min(len(tasks), cpus))),
        )
        ds = ds.map_batches(
            prepare,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs=kwargs,
            num_cpus=prep.num_cpus,
            compute=ray.data.TaskPoolStrategy(size=prep.concurrency) if prep.concurrency else None,
        )
    with warnings.catch_warnings():
        # max_restarts/max_task_retries can only be passed as remote args, which Ray 2.5x marks deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(
            EncodeActor,
            fn_constructor_kwargs={"settings": settings.encoder},
            # Whole units per call: as many as fill a model batch (the encoder cuts its rows into batches of
            # inference.batch_size), one when isolating.
            batch_size=1 if isolate else settings.units_per_call,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(
                min_size=inference.min_actors,
                max_size=inference.max_actors,
                # One batch in flight per actor when isolating: a crash then fails the poison row's
                # batch alone, not the batches queued behind it.
                max_tasks_in_flight_per_actor=1 if isolate else None,
            ),
            num_gpus=settings.encoder.num_gpus,
            num_cpus=inference.num_cpus_per_actor,
            # Restart crashed actors always (a lost node, a poison row), but retry their batch a bounded
            # number of times: Ray Data's default retries it forever, and a poison row would never end.
            max_restarts=-1,
            max_task_retries=inference.max_task_retries,
        )
    # Writing reserves no CPU (Parquet encoding of a unit takes milliseconds) but runs a bounded number at
    # once, so it never waits behind decode tasks for a CPU while the encoder's output piles up.
    write_kwargs = (
        {"stage": write_units, "settings": settings.write} if isolate else {"settings": settings.write}
    )
    return ds.map_batches(
        isolated if isolate else write_units,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs=write_kwargs,
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=1 if isolate else max(2, cpus)),
    )


def _drain(ds, committer: Committer, bars: bool) -> None:
    """Commit every unit the plan writes; without progress bars (not a terminal), a line every few s."""
    progress = Progress(committer, quiet=bars)
    for results in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        committer.take(results)
        progress.tick()


@contextlib.contextmanager
def _data_context(cfg: Config):
    """Every output row of every stage becomes a block of its own (each row is a whole packed unit);
    Ray Data's progress bars on a terminal, and its progress log quiet elsewhere (_drain says it briefly).
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size, context.max_errored_blocks, context.enable_progress_bars
    context.target_max_block_size = 1
    # Failed blocks never abort a round: their units are redone row by row (run_stream).
    context.max_errored_blocks = 1 << 30
    context.enable_progress_bars = cfg.ray.progress_bars and sys.stderr.isatty()
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    if not context.enable_progress_bars:
        data_log.setLevel(logging.WARNING)
    try:
        yield context.enable_progress_bars
    finally:
        context.target_max_block_size, context.max_errored_blocks, context.enable_progress_bars = saved
        data_log.setLevel(level)


def _finalizer(settings: StageSettings, buckets: list):
    """Merges a split unit's pieces in a Ray task (rows are never handled by the driver)."""
    import ray

    task = ray.remote(num_cpus=0)(_finalize_task)

    def finalize(unit_id: str, pieces: list[str], unit: UnitTask, crashed: ReadTask | None) -> UnitResult:
        return ray.get(task.remote(unit_id, pieces, crashed, settings.read, settings.write, buckets))

    return finalize


def _finalize_task(
    unit_id: str,
    pieces: list[str],
    crashed: ReadTask | None,
    read: ReadSettings,
    write: WriteSettings,
    buckets: list,
) -> UnitResult:
    from embedding.errors import ErrorCode
    from embedding.stages.contract import resolve_buckets
    from embedding.stages.read import unit_rows
    from embedding.stages.rows import fail_rows

    rows = None
    if crashed is not None:
        # The rows that no worker survived: read again (without the staged pieces' rows), failed as crashed.
        message = (
            "the worker failed on this row in every attempt (a crash or an error; see the Ray Data logs)"
        )
        for _, table in unit_rows(crashed, read, resolve_buckets(buckets)):
            rows = fail_rows(
                table, dict.fromkeys(range(table.num_rows), (ErrorCode.WORKER_CRASHED, message)), "pipeline"
            )
    return finalize_unit(unit_id, pieces, rows, write)


def run_stream(plan: Plan, cfg: Config, settings: StageSettings, committer: Committer) -> dict[str, int]:
    """Run the plan's read tasks to committed units; isolate and account for rows of failed blocks.

    Failed blocks never abort a round (Ray Data drops them once their retries are spent, and restarts
    crashed actors); their rows are simply missing afterwards. Returns rows per round.
    """
    import ray

    buckets = [ray.put(b) if not isinstance(b, ray.ObjectRef) else b for b in plan.fates]
    committer.finalize = _finalizer(settings, buckets)
    first = sum(u.expected for u in plan.todo.values())
    report = {"first": first, "isolated": 0, "crashed": 0}
    with _data_context(cfg) as bars:
        if plan.reads:
            _drain(build_dataset(plan.reads, buckets, cfg, settings, isolate=False), committer, bars)
        missing = committer.missing_rows()
        report["isolated"] = missing
        if not missing:
            return report
        if missing > max(100, first // 2):
            # Not a poison row but a broken environment or a bug: fail, and let a rerun redo the units.
            raise RuntimeError(f"{missing} of {first} rows failed in the pipeline; see the Ray Data logs")
        log.warning("%d rows were in failed blocks; retrying them one by one", missing)
        _drain(
            build_dataset(_isolating_reads(plan, committer), buckets, cfg, settings, isolate=True),
            committer,
            bars,
        )
    units = committer.missing()
    report["crashed"] = committer.missing_rows()
    for unit_id, unit in units.items():
        file_uri, file_index = committer.source[unit_id]
        committer.complete(unit_id, ReadTask(file_uri, file_index, (unit,)))
    return report


def _isolating_reads(plan: Plan, committer: Committer) -> list[ReadTask]:
    tasks = []
    for unit_id, unit in committer.missing().items():
        file_uri, file_index = committer.source[unit_id]
        tasks.append(ReadTask(file_uri, file_index, (unit,), isolate=True))
    return tasks
