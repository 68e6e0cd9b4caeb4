"""The decode stage of the pipeline: fetching, validating, decoding and resizing each row's image, or
sampling its video's frames; or validating texts. Plain functions of Arrow tables, run by Ray Data tasks.

A video row becomes one stream row per sampled frame (the same unit and row index, with `frame_index` and
`frame_time_s`), each carrying uint8 pixels exactly as an image does, so the encoder treats them alike; the
write stage turns them back into one outcome per video row (embedding.stages.write).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from embedding.config import Config
from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch.uripolicy import SourceSettings
from embedding.media.image import DecodedImage, decode_alone
from embedding.media.imagecheck import ImageLimits
from embedding.media.load import Fetched, MediaSettings, decode_row, fetch_media
from embedding.media.resize import Preprocess
from embedding.media.text import TextLimits, validate_text
from embedding.media.video import VideoFrames, VideoSettings
from embedding.stages.rows import (
    append_columns,
    fail_rows,
    pack,
    pending_rows,
    pixels_array,
    timing_columns,
    unpack,
)

FETCH_AHEAD = 2  # files fetched ahead of decoding, per fetch thread


def media_settings(cfg: Config, prep: Preprocess) -> MediaSettings:
    """The decode stage's settings, from its config sections (input's source policy, fetch, limits, images,
    video) and the model version's preprocessing."""
    return MediaSettings(
        SourceSettings.from_config(cfg), prep, ImageLimits.from_config(cfg), VideoSettings.from_config(cfg)
    )


def stage_for(
    media: MediaSettings | None, limits: TextLimits | None, function: Callable | None = None
) -> tuple[Callable, dict[str, Any]]:
    """The decode function of a run (images: `function`, that of preprocess.stage_function, else
    decode_images) or the text check (texts), with its keyword arguments."""
    if media is not None:
        return function or decode_images, {"settings": media}
    return check_texts, {"limits": limits}


def decode_images(batch: pa.Table, settings: MediaSettings) -> pa.Table:
    """Ray Data stage: packed units in, the same units with their pixels (or error rows) out."""
    return pack([decode_rows(rows, settings) for rows in unpack(batch)])


def decode_rows(batch: pa.Table, settings: MediaSettings) -> pa.Table:
    """Fetch every pending row (threads: I/O bound) and decode each as it arrives (this task's one CPU).

    Failures become error rows with the stage that failed (fetch or decode) and the attempts made.
    """
    started = time.time()
    n = batch.num_rows
    pending = pending_rows(batch)
    uris = batch.column("uri").to_pylist()
    inline = batch.column("image").to_pylist() if "image" in batch.column_names else [None] * n
    attempts = [a or 0 for a in batch.column("attempts").to_pylist()]
    decoded: dict[int, DecodedImage | VideoFrames] = {}
    sha: dict[int, str] = {}
    failed: dict[str, dict[int, tuple[ErrorCode, str]]] = {"fetch": {}, "decode": {}}
    exhausted: dict[int, Fetched] = {}  # rows that ran out of memory: retried alone, after the others

    def keep(i: int, fetched: Fetched, alone: bool) -> None:
        try:
            if alone:
                assert fetched.data is not None, "a row that ran out of memory was held whole"
                decoded[i] = decode_alone(fetched.data, settings.prep, settings.limits)
            else:
                decoded[i] = decode_row(fetched, settings)
        except EmbeddingError as exc:
            if exc.code == ErrorCode.RESOURCE_EXHAUSTED and not alone and fetched.data is not None:
                exhausted[i] = fetched
            else:
                failed["decode"][i] = (exc.code, exc.message)
            return
        if fetched.data is not None:
            sha[i] = hashlib.sha256(fetched.data).hexdigest()

    threads = max(1, min(settings.source.fetch.threads, len(pending)))
    # Fetching runs ahead of decoding by at most FETCH_AHEAD files per thread: a fast disk would otherwise
    # hold a whole unit's files in memory at once (1,024 photos of a few MB each).
    rows = iter(pending)
    futures: dict[cf.Future, int] = {}
    with cf.ThreadPoolExecutor(threads) as pool:

        def fetch_more() -> None:
            while len(futures) < FETCH_AHEAD * threads and (i := next(rows, None)) is not None:
                futures[pool.submit(fetch_media, uris[i], inline[i], settings)] = i

        fetch_more()
        while futures:
            done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
            for future in done:
                i = futures.pop(future)
                try:
                    fetched = future.result()
                except EmbeddingError as exc:
                    failed["fetch"][i] = (exc.code, exc.message)
                    attempts[i] += exc.attempts
                    continue
                attempts[i] += fetched.attempts
                keep(i, fetched, alone=False)
                fetch_more()
            fetch_more()
    for i in list(exhausted):
        keep(i, exhausted.pop(i), alone=True)
    for i, result in decoded.items():
        if isinstance(result, VideoFrames) and not result.frames:
            failed["decode"][i] = (ErrorCode.INVALID_VIDEO_FORMAT, "the video has no frame to sample")
    for stage, errors in failed.items():
        batch = fail_rows(batch, errors, stage)
        for i in errors:
            decoded.pop(i, None)
    if "image" in batch.column_names:
        batch = batch.drop_columns(["image"])
    batch = batch.set_column(
        batch.schema.get_field_index("attempts"), "attempts", pa.array(attempts, pa.int32())
    )
    return _with_pixels(batch, decoded, sha, settings, started)


def _with_pixels(
    batch: pa.Table,
    decoded: dict[int, DecodedImage | VideoFrames],
    sha: dict[int, str],
    settings: MediaSettings,
    started: float,
) -> pa.Table:
    """The rows with their pixels; a video row repeated once per sampled frame (module docstring)."""
    take: list[int] = []
    pixels: list[np.ndarray | None] = []
    width: list[int | None] = []
    height: list[int | None] = []
    digest: list[str | None] = []
    index: list[int | None] = []
    times: list[float | None] = []
    for i in range(batch.num_rows):
        result = decoded.get(i)
        frames = result.frames if isinstance(result, VideoFrames) else [None]
        for frame in frames:
            take.append(i)
            digest.append(sha.get(i))
            if frame is not None:  # a frame of a video
                pixels.append(frame.pixels)
                width.append(frame.width)
                height.append(frame.height)
                index.append(frame.frame_index)
                times.append(frame.frame_time_s)
                continue
            pixels.append(result.pixels if result is not None else None)
            width.append(result.width if result is not None else None)
            height.append(result.height if result is not None else None)
            index.append(None)
            times.append(None)
    rows = batch.take(pa.array(np.asarray(take, np.int64)))
    pixel_column = pixels_array(pixels, settings.prep.size)
    return with_decoded_columns(rows, width, height, digest, pixel_column, started, index, times)


def with_decoded_columns(
    rows: pa.Table,
    width: list[int | None],
    height: list[int | None],
    digest: list[str | None],
    pixels: pa.Array,
    started: float,
    frame_index: list[int | None] | None = None,
    frame_time_s: list[float | None] | None = None,
) -> pa.Table:
    """The rows with the columns the decode stage adds (sizes, the content's SHA-256, the frame a video row
    is, the pixels, the stage's timing); no frame columns given: no row is a video frame."""
    n = rows.num_rows
    return append_columns(
        rows,
        {
            "width": pa.array(width, pa.int32()),
            "height": pa.array(height, pa.int32()),
            "content_sha256": pa.array(digest, pa.string()),
            "frame_index": pa.nulls(n, pa.int32())
            if frame_index is None
            else pa.array(frame_index, pa.int32()),
            "frame_time_s": (
                pa.nulls(n, pa.float64()) if frame_time_s is None else pa.array(frame_time_s, pa.float64())
            ),
            "pixels": pixels,
            **timing_columns("decode", n, started, time.time()),
        },
    )


def check_texts(batch: pa.Table, limits: TextLimits) -> pa.Table:
    """Ray Data stage: packed units of texts in, the same with InvalidText error rows out."""
    return pack([check_text_rows(rows, limits) for rows in unpack(batch)])


def check_text_rows(batch: pa.Table, limits: TextLimits) -> pa.Table:
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
