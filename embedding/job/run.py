"""`embedding run`: the whole job for one config, from manifest to committed units, summary and index.

Everything that can be wrong with the config, the manifest's layout or the model version is checked first
(embedding.job.checks), before any row is read: while Ray starts, so that the two fixed costs overlap, or,
for a small run on this machine, without Ray at all (embedding.job.standalone).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from typing import Any

from embedding import redact
from embedding.cluster import connect_ray, gpus_per_actor, ray_address
from embedding.config import Config
from embedding.job.checks import Prepared, prepare, stage_settings
from embedding.job.commit import Committer
from embedding.job.overwrite import recover_overwrites, replace_with, shadow_partition
from embedding.job.plan import LocalTasks, Plan, RayTasks, make_plan
from embedding.job.ray_executor import run_stream
from embedding.job.standalone import Stopped, remaining, run_standalone
from embedding.job.summary import Phases, build_summary, new_run_id, save_config, save_summary
from embedding.models.identity import check_same, check_width
from embedding.models.registry import check_available
from embedding.store.lease import Lease
from embedding.store.manifest import list_manifest, plan_units
from embedding.store.partition import Partition

log = logging.getLogger(__name__)

# Up to this many ids (manifest rows to plan plus committed rows) are planned in the driver's own process;
# beyond, by Ray tasks (the driver's memory must not grow with the manifest).
LOCAL_PLAN_ROWS = 250_000


def _start_up(target: Partition, job: Prepared) -> None:
    """Recovery and checks that only the lease holder may do: finish or undo what a killed run left."""
    cfg = job.cfg
    recover_overwrites(target)
    rolled, dropped = target.recover()
    orphans = target.remove_orphans()
    if rolled or dropped or orphans:
        log.info(
            "recovered an interrupted run: %d units rolled forward, %d partial units and %d orphan files "
            "dropped",
            rolled,
            dropped,
            orphans,
        )
    if cfg.run.mode != "overwrite":
        check_same(
            target.identity(), job.identity, f"output {cfg.output.root} (model version '{cfg.model.version}')"
        )


# A local manifest this small is read and checked before deciding whether Ray is needed at all (a few
# hundred ms at most); a larger one is checked while Ray starts, as a run that large needs it anyway.
SMALL_MANIFEST_BYTES = 256 * 1024 * 1024


def _standalone(cfg: Config, job: Prepared) -> bool:
    """Whether this run goes without Ray (embedding.job.standalone; `run.executor`)."""
    if cfg.run.executor != "auto":
        return cfg.run.executor == "standalone"
    rows = sum(f.num_rows for f in job.files)
    return ray_address(cfg.ray) is None and rows <= cfg.run.standalone_max_rows


def _prepare_while_ray_starts(cfg: Config) -> tuple[Prepared, bool]:
    """The start-time checks and the manifest's listing, while Ray starts: the two fixed costs overlap.
    Returns the checked job and whether it runs without Ray (then Ray is not started).

    Cheap checks that fail often (an unknown version, missing weights, a wrong width, a manifest path that
    names nothing) come first, so a bad config still fails before Ray starts. Ray starts in this (the main)
    thread; reading the files' metadata, their digests and the model's identity run beside it. A small
    manifest of a run without a cluster is checked first instead: it may need no Ray at all.
    """
    check_width(cfg.model.version, check_available(cfg.model.version, cfg.model))
    listing = list_manifest(cfg.input.manifest, cfg.input.storage_options)
    listed = sum(info.get("size") or 0 for _, info in listing)
    if cfg.run.executor == "standalone" or (
        cfg.run.executor == "auto" and ray_address(cfg.ray) is None and listed <= SMALL_MANIFEST_BYTES
    ):
        job = prepare(cfg, listing)
        return job, _standalone(cfg, job)
    with cf.ThreadPoolExecutor(1, thread_name_prefix="prepare") as pool:
        prepared = pool.submit(prepare, cfg, listing)
        try:
            connect_ray(cfg.ray)
        except BaseException:
            prepared.cancel()
            raise
        job = prepared.result()
        return job, _standalone(cfg, job)


def _run_stages(
    plan: Plan, job: Prepared, run_id: str, partition: Partition, committer: Committer, standalone: bool
) -> tuple[dict[str, int], str]:
    """Write the plan's units without Ray or on Ray; returns the rows of each round and the executor."""
    cfg = job.cfg
    if standalone:
        settings = stage_settings(job, run_id, partition, plan, 0.0)
        try:
            return run_standalone(plan, cfg, settings, committer), "standalone"
        except Stopped as exc:
            log.warning(
                "the run without Ray stopped (%s); the %d units left run on Ray, which isolates the row",
                exc,
                len(committer.todo),
            )
            plan = remaining(plan, committer)
    connect_ray(cfg.ray)
    settings = stage_settings(job, run_id, partition, plan, gpus_per_actor(cfg))
    return run_stream(plan, cfg, settings, committer), "standalone, then ray" if standalone else "ray"


def run(cfg: Config, phases: Phases | None = None) -> dict[str, Any]:
    """Run the job for a config; returns the summary (also saved as summary.json)."""
    phases = phases or Phases(time.time())
    phases.end("driver_start")
    started = time.time()
    redact.install(cfg.model_dump(mode="json"))  # secrets of the config never reach the log
    job, standalone = _prepare_while_ray_starts(cfg)
    phases.end("checks_ray_start")
    run_id = new_run_id()
    target = Partition(cfg.output.root, job.kind, cfg.model.version, cfg.output.storage_options)
    with Lease(target, run_id, cfg.run.lease_timeout_s) as lease:
        _start_up(target, job)
        save_config(cfg, run_id)
        partition = shadow_partition(target, run_id) if cfg.run.mode == "overwrite" else target
        if standalone and lease.took_over and cfg.run.executor == "auto":
            log.warning(
                "the last run of this output died; this one runs on Ray, which isolates a crashing row"
            )
            standalone = False
        markers = partition.markers()
        units = plan_units(job.files, cfg.input.unit_rows, markers)
        held = sum(m["rows_embedded"] + m["rows_failed"] for m in markers.values())
        big = not standalone and sum(f.num_rows for f in job.files) + held > LOCAL_PLAN_ROWS
        if big:
            connect_ray(cfg.ray)
        plan = make_plan(
            job.kind,
            job.files,
            units,
            partition,
            markers,
            cfg.run.retry_errors,
            cfg.input.storage_options,
            RayTasks() if big else LocalTasks(),
        )
        if partition.identity() is None:
            partition.record_identity(job.identity)
        phases.end("planning")
        marker_base = {
            "kind": job.kind,
            "model_version": cfg.model.version,
            "compression": cfg.output.compression,
        }
        committer = Committer(partition, plan, run_id, marker_base, finalize=None)
        rounds, executor = {"first": 0, "isolated": 0, "crashed": 0}, "none"
        if plan.todo:
            rounds, executor = _run_stages(plan, job, run_id, partition, committer, standalone)
        phases.end("pipeline")
        lease.check()
        if committer.todo:
            raise RuntimeError(f"{len(committer.todo)} units were not committed; rerun to finish them")
        committer.retire(sorted(committer.superseded))
        if partition is not target:
            replace_with(target, partition)
        phases.end("commit")
        index = None
        if cfg.index.enabled and job.kind == "image":
            from embedding.index.build import build_index

            manifest = build_index(cfg, lease=lease)
            index = {
                "kind": manifest.kind,
                "rows": manifest.rows,
                "build_id": manifest.build_id,
                "self_check": manifest.self_check,
                "change": manifest.change.model_dump() if manifest.change else None,
            }
        phases.end("index")
        summary = build_summary(cfg, run_id, job.kind, plan.counts, committer.totals, rounds, started, phases)
        first = committer.totals.first_t1.get("encode")
        summary["first_batch_encoded_s"] = round(first - phases.origin, 3) if first else None
        summary["executor"] = executor
        if index is not None:
            summary["index"] = index
        failed = None
        if cfg.sinks and job.kind == "image":
            from embedding.errors import SinkError
            from embedding.sinks.deliver import deliver

            try:
                summary["sinks"] = deliver(cfg, on_ray=executor == "ray")
            except SinkError as exc:  # after the commit: nothing embedded is lost
                summary["sinks"], failed = {"error": str(exc)}, exc
            phases.end("sinks")
            summary["phases_s"] = phases.to_dict()
        save_summary(cfg, run_id, summary)
    if failed is not None:
        raise failed
    return summary
