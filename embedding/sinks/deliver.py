"""Delivering committed units to the sinks: the driver decides, tasks write.

Sinks are downstream of the commit, never upstream: a unit reaches a sink only once its Parquet files are
committed, and a sink that fails un-commits nothing. For each sink the driver compares the units it holds
(unit id -> marker digest) with the committed ones; units it lacks or holds in another version go to
tasks (Ray tasks on a Ray run, this process on a standalone one), each reading its units' committed files
and writing them; the units it holds that are no longer committed are retired. Vectors never pass
through the driver. `embedding sink CONFIG` runs the same outside a run: a sink added after the fact, or
one whose database was down, is brought up to date without embedding anything again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from embedding.config import Config
from embedding.config_sinks import LanceSinkConfig, PostgresSinkConfig
from embedding.errors import ConfigError, SinkError
from embedding.sinks.base import Sink, failure
from embedding.sinks.rows import unit_rows
from embedding.store import faults
from embedding.store.lease import Lease
from embedding.store.partition import Partition

log = logging.getLogger(__name__)

TASKS_PER_SINK = 4  # connections one sink gets at a time


def open_sink(config: PostgresSinkConfig | LanceSinkConfig, version: str) -> Sink:
    """The sink of a config entry, for a model version."""
    if isinstance(config, PostgresSinkConfig):
        from embedding.sinks.postgres import PostgresSink

        return PostgresSink(config, version)
    from embedding.sinks.lance import LanceSink

    return LanceSink(config, version)


def _frames(marker: Any) -> bool:
    return bool(marker.body.get("rows_frames"))


def write_units(
    config: PostgresSinkConfig | LanceSinkConfig, partition: Partition, units: list[tuple[str, str, bool]]
) -> int:
    """Write units (id, marker digest, has frames) to a sink, each whole; returns the rows written.
    Runs where the work is: a Ray task, or the driver's process on a standalone run."""
    sink = open_sink(config, partition.version)
    try:
        written = 0
        for unit, digest, frames in units:
            rows = unit_rows(partition, unit, frames)
            sink.write(unit, digest, rows)
            faults.point("sink.after_unit")  # a test's kill between two units' transactions
            written += rows.num_rows
        return written
    finally:
        sink.close()


def _prepare(sink: Sink, partition: Partition, markers: dict) -> None:
    first = min(markers)
    sink.prepare(partition.identity() or {}, unit_rows(partition, first, _frames(markers[first])).schema)


def deliver(cfg: Config, on_ray: bool, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Bring every sink (or those named) up to date with the committed units of cfg.model.version.

    Returns per sink what was done; raises SinkError (one line per failed sink) after trying them all.
    """
    partition = Partition(cfg.output.root, "image", cfg.model.version, cfg.output.storage_options)
    markers = partition.markers()
    done: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for config in cfg.sinks:
        if names and config.name not in names:
            continue
        started = time.time()
        try:
            done[config.name] = _deliver_one(config, partition, markers, on_ray)
        except Exception as exc:
            problem = failure(config.name, exc)
            log.error("%s", problem)
            done[config.name] = {"error": str(problem)}
            problems.append(str(problem))
            continue
        done[config.name]["seconds"] = round(time.time() - started, 3)
    if problems:
        raise SinkError("; ".join(problems) + " (the embeddings are committed: `embedding sink` finishes it)")
    return done


def deliver_now(cfg: Config, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """`embedding sink`: the config's sinks (or those named) brought up to date in this process, under the
    output's lease (a run, or another delivery, of the same output waits for it or finds it taken)."""
    import secrets

    unknown = set(names or []) - {s.name for s in cfg.sinks}
    if unknown or not cfg.sinks:
        have = ", ".join(s.name for s in cfg.sinks) or "none"
        raise ConfigError(f"no sink named {', '.join(sorted(unknown)) or 'in the config'} (sinks: {have})")
    partition = Partition(cfg.output.root, "image", cfg.model.version, cfg.output.storage_options)
    with Lease(partition, "sink-" + secrets.token_hex(4), cfg.run.lease_timeout_s, purpose="sink delivery"):
        return deliver(cfg, on_ray=False, names=names)


def _deliver_one(
    config: PostgresSinkConfig | LanceSinkConfig, partition: Partition, markers: dict, on_ray: bool
) -> dict[str, Any]:
    sink = open_sink(config, partition.version)
    try:
        if not markers:
            return {"written_units": 0, "written_rows": 0, "retired_units": 0}
        _prepare(sink, partition, markers)
        held = sink.held()
        retired = sorted(u for u in held if u not in markers)
        todo = [(u, m.digest, _frames(m)) for u, m in sorted(markers.items()) if held.get(u) != m.digest]
        sink.retire(retired)
        rows = _write(config, partition, todo, on_ray)
        sink.finish()
    finally:
        sink.close()
    return {"written_units": len(todo), "written_rows": rows, "retired_units": len(retired)}


def _write(
    config: PostgresSinkConfig | LanceSinkConfig,
    partition: Partition,
    todo: list[tuple[str, str, bool]],
    on_ray: bool,
) -> int:
    if not todo:
        return 0
    if not on_ray:
        return write_units(config, partition, todo)
    import ray

    groups = [todo[i::TASKS_PER_SINK] for i in range(min(TASKS_PER_SINK, len(todo)))]
    task = ray.remote(num_cpus=0.5, max_retries=1)(write_units)  # a unit written twice: the same rows
    return sum(ray.get([task.remote(config, partition, group) for group in groups]))
