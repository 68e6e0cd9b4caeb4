"""The Ray Data plan: read units -> fetch, validate, decode, resize (CPU tasks) -> encode (actors).

`run_stream` executes the plan and hands every output batch to the sink. When blocks fail for good (a
worker that keeps dying, a lost node), the rows they held never reach the sink; they are planned again in
a second round with one row per batch, so a poison row fails alone, and a row that still kills its worker
in the last round becomes a `WorkerCrashed` error row. No row is lost, none is taken twice.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from embedding.config import Config
from embedding.encoder import ImageEncodeStage, TextEncodeStage
from embedding.errors import ConfigError, EmbeddingError, ErrorCode
from embedding.images import ImageLimits, Preprocess, decode
from embedding.manifest import IMAGE_ID, TEXT_ID, read_rows, resolve_uri
from embedding.rows import append_columns, fail_rows, pending_rows, pixels_array, timing_columns
from embedding.sink import Sink
from embedding.sources import SourceSettings, check_size, fetch
from embedding.text import TextLimits, validate_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadSettings:
    kind: str
    carried: list[str]
    has_uri: bool
    has_inline: bool
    storage_options: dict[str, dict]


def read_units(batch: dict[str, np.ndarray], settings: ReadSettings) -> Iterator[pa.Table]:
    """Unit descriptors (JSON) in, one stream table per unit out: its rows to process and preset errors.

    One unit per read task on purpose: Ray Data merges the small outputs of a task into one block and
    hands whole blocks to the next stage, so the unit is the grain of parallelism and of streaming.
    """
    id_col, body = (IMAGE_ID, ["uri", "image"]) if settings.kind == "image" else (TEXT_ID, ["text"])
    present = [c for c in body if c != "uri" or settings.has_uri]
    present = [c for c in present if c != "image" or settings.has_inline]
    columns = [id_col, *present, *settings.carried]
    for descriptor in batch["task"]:
        unit = json.loads(descriptor)
        table = read_rows(unit["source_file"], unit["start"], unit["stop"], columns, settings.storage_options)
        positions = [r - unit["start"] for r in unit["rows"]]
        yield _stream_rows(table.take(positions), unit, id_col, settings)


def _stream_rows(rows: pa.Table, unit: dict[str, Any], id_col: str, settings: ReadSettings) -> pa.Table:
    n = rows.num_rows
    preset = [unit["preset"].get(str(r), [None, None, 0]) for r in unit["rows"]]
    columns: dict[str, pa.Array] = {
        "unit_id": pa.array([unit["unit_id"]] * n, pa.string()),
        "source_file": pa.array([unit["source_file"]] * n, pa.string()),
        "row_index": pa.array(unit["rows"], pa.int64()),
        "id": rows.column(id_col).cast(pa.string()),
    }
    if settings.kind == "image":
        uris = rows.column("uri").to_pylist() if settings.has_uri else [None] * n
        columns["uri"] = pa.array([resolve_uri(u, unit["folder"]) if u else None for u in uris], pa.string())
        if settings.has_inline:
            columns["image"] = rows.column("image").cast(pa.large_binary())
    else:
        columns["text"] = rows.column("text")
    for name in settings.carried:
        columns[name] = rows.column(name)
    columns["error_code"] = pa.array([p[0] for p in preset], pa.string())
    columns["error_message"] = pa.array([p[1] for p in preset], pa.string())
    columns["stage"] = pa.array(["manifest" if p[0] else None for p in preset], pa.string())
    columns["attempts"] = pa.array([p[2] for p in preset], pa.int32())
    return pa.table(columns)


@dataclass(frozen=True)
class DecodeSettings:
    source: SourceSettings
    prep: Preprocess
    limits: ImageLimits


def _fetch_row(
    row: int, uri: str | None, inline: bytes | None, settings: DecodeSettings, pool: cf.Executor
) -> tuple[bytes, int]:
    """The bytes of one row and the fetch attempts made. Raises EmbeddingError."""
    if inline is not None:
        check_size(len(inline), settings.source.max_bytes, f"inline image of row {row}")
        return inline, 0
    if not uri:
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW, "the row has neither a uri nor inline image bytes"
        )
    return fetch(uri, settings.source, pool)


def decode_images(batch: pa.Table, settings: DecodeSettings) -> pa.Table:
    """Fetch every pending row (threads: I/O bound) and decode each as it arrives (this task's one CPU).

    Failures become error rows with the stage that failed (fetch or decode) and the attempts made.
    """
    started = time.time()
    n = batch.num_rows
    pending = pending_rows(batch)
    uris = batch.column("uri").to_pylist()
    inline = batch.column("image").to_pylist() if "image" in batch.column_names else [None] * n
    pixels: list[np.ndarray | None] = [None] * n
    width, height, sha = [None] * n, [None] * n, [None] * n
    attempts = [a or 0 for a in batch.column("attempts").to_pylist()]
    failed: dict[str, dict[int, tuple[ErrorCode, str]]] = {"fetch": {}, "decode": {}}
    threads = max(1, min(settings.source.fetch.threads, len(pending)))
    with cf.ThreadPoolExecutor(threads) as pool, cf.ThreadPoolExecutor(threads) as io:
        futures = {pool.submit(_fetch_row, i, uris[i], inline[i], settings, io): i for i in pending}
        for future in cf.as_completed(futures):
            i = futures[future]
            try:
                data, tries = future.result()
            except EmbeddingError as exc:
                failed["fetch"][i] = (exc.code, exc.message)
                attempts[i] += exc.attempts
                continue
            attempts[i] += tries
            try:
                decoded = decode(data, settings.prep, settings.limits)
            except EmbeddingError as exc:
                failed["decode"][i] = (exc.code, exc.message)
                continue
            pixels[i], width[i], height[i] = decoded.pixels, decoded.width, decoded.height
            sha[i] = hashlib.sha256(data).hexdigest()
    for stage, errors in failed.items():
        batch = fail_rows(batch, errors, stage)
    if "image" in batch.column_names:
        batch = batch.drop_columns(["image"])
    batch = batch.set_column(
        batch.schema.get_field_index("attempts"), "attempts", pa.array(attempts, pa.int32())
    )
    return append_columns(
        batch,
        {
            "width": pa.array(width, pa.int32()),
            "height": pa.array(height, pa.int32()),
            "content_sha256": pa.array(sha, pa.string()),
            "pixels": pixels_array(pixels, settings.prep.size),
            **timing_columns("decode", n, started, time.time()),
        },
    )


def check_texts(batch: pa.Table, limits: TextLimits) -> pa.Table:
    """Validate every pending text against the word limits; failures become InvalidText error rows."""
    started = time.time()
    texts = batch.column("text").to_pylist()
    errors = {}
    for i in pending_rows(batch):
        try:
            validate_text(texts[i], limits)
        except EmbeddingError as exc:
            errors[i] = (exc.code, exc.message)
    batch = fail_rows(batch, errors, "validate")
    return append_columns(batch, timing_columns("decode", batch.num_rows, started, time.time()))


@dataclass(frozen=True)
class StageSettings:
    """Everything the Ray Data plan needs, resolved once in the driver."""

    kind: str
    version: str
    read: ReadSettings
    decode: DecodeSettings | None  # images
    text_limits: TextLimits | None  # texts
    num_gpus_per_actor: float


def build_dataset(tasks: list[str], cfg: Config, settings: StageSettings, isolate: bool):
    """The Ray Data plan for some read tasks; `isolate` puts one row in each batch (second round)."""
    import ray.data

    inference, prep = cfg.inference, cfg.preprocess
    # One descriptor per block, and one block per task: Ray Data fuses the read and decode stages and
    # bundles input blocks until a task has its batch_size rows, so a decode batch_size of N would put N
    # units (one row each here) into one task and serialise them. With batch_size=None every task is one
    # unit (or one row, when isolating), and the units spread over all the CPUs.
    ds = ray.data.from_items([{"task": t} for t in tasks], override_num_blocks=max(1, len(tasks)))
    # The isolating round's few one-row tasks reserve no CPU: Ray Data lets go of its actors by dropping
    # references, and an encoder that crashed on a poison row and was restarted can outlive the first
    # round holding its CPU, which would leave these tasks waiting forever.
    num_cpus = 0 if isolate else prep.num_cpus
    ds = ds.map_batches(
        read_units,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"settings": settings.read},
        num_cpus=num_cpus,
    )
    if settings.kind == "image":
        prepare, kwargs, stage = decode_images, {"settings": settings.decode}, ImageEncodeStage
    else:
        prepare, kwargs, stage = check_texts, {"limits": settings.text_limits}, TextEncodeStage
    ds = ds.map_batches(
        prepare,
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=prep.concurrency) if prep.concurrency else None,
        fn_kwargs=kwargs,
        num_cpus=num_cpus,
    )
    if inference.stage_class:
        stage = load_stage_class(inference.stage_class)
    with warnings.catch_warnings():
        # max_restarts/max_task_retries can only be passed as remote args, which Ray 2.5x marks deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(
            stage,
            fn_constructor_kwargs={
                "version": settings.version,
                "model_cfg": cfg.model,
                "inference": inference,
            },
            batch_size=1 if isolate else inference.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(
                min_size=inference.min_actors,
                max_size=inference.max_actors,
                # One batch in flight per actor when isolating: a crash then fails the poison row's
                # batch alone, not the batches queued behind it.
                max_tasks_in_flight_per_actor=1 if isolate else None,
            ),
            num_gpus=settings.num_gpus_per_actor,
            num_cpus=inference.num_cpus_per_actor,
            # Restart crashed actors always (a lost node, a poison row), but retry their batch a bounded
            # number of times: Ray Data's default retries it forever, and a poison row would never end.
            max_restarts=-1,
            max_task_retries=inference.max_task_retries,
        )


def load_stage_class(path: str) -> type:
    """Import "module:Class"; raises ConfigError when it cannot be found."""
    import importlib

    module_name, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"inference.stage_class: cannot import {path!r}: {exc}") from exc


def _drain(ds, sink: Sink) -> None:
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        sink.add(batch)


def run_stream(reads: list[dict], cfg: Config, settings: StageSettings, sink: Sink) -> dict[str, int]:
    """Run the plan into the sink; isolate and account for rows whose blocks failed (module docstring).

    Failed blocks never abort a round (Ray Data drops them once their retries are spent, and restarts
    crashed actors); their rows are simply missing from the sink afterwards. Returns rows per round.
    """
    import ray.data

    from embedding.plan import restrict

    context = ray.data.DataContext.get_current()
    saved = context.max_errored_blocks
    context.max_errored_blocks = 1 << 30
    try:
        report = {"first": sum(len(r["rows"]) for r in reads), "isolated": 0, "crashed": 0}
        _drain(build_dataset([json.dumps(unit) for unit in reads], cfg, settings, isolate=False), sink)
        retry = restrict(reads, sink.missing())
        report["isolated"] = missing = sum(len(r["rows"]) for r in retry)
        if not missing:
            return report
        if missing > max(100, report["first"] // 2):
            # Not a poison row but a broken environment or a bug: fail, and let a rerun redo the units.
            raise RuntimeError(
                f"{missing} of {report['first']} rows failed in the pipeline; see the Ray Data logs"
            )
        log.warning("%d rows were in failed blocks; retrying them one by one", missing)
        one_row_tasks = [json.dumps({**unit, "rows": [row]}) for unit in retry for row in unit["rows"]]
        _drain(build_dataset(one_row_tasks, cfg, settings, isolate=True), sink)
    finally:
        context.max_errored_blocks = saved
    still = restrict(retry, sink.missing())
    crashed = sum(len(r["rows"]) for r in still)
    if crashed and crashed == missing and crashed > 1:
        raise RuntimeError(f"all {crashed} rows retried one by one failed again; see the Ray Data logs")
    message = "the worker failed on this row in every attempt (a crash or an error; see the Ray Data logs)"
    for unit in still:
        for table in read_units({"task": np.array([json.dumps(unit)])}, settings.read):
            errors = {i: (ErrorCode.WORKER_CRASHED, message) for i in range(table.num_rows)}
            sink.add(fail_rows(table, errors, "pipeline"))
    report["crashed"] = crashed
    return report
