"""The closed set of error codes (docs/architecture.md, README.md), and the typed exceptions that carry them.

Row-level problems never escape as exceptions from the job: each becomes an error row with one of these codes.
The single-item API (`vectorize_image`, `vectorize_text`) raises them as `EmbeddingError`s instead.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every code an error row can carry; README.md documents each."""

    INVALID_IMAGE_SIZE = "InvalidImageSize"  # the file is not under the byte limit
    INVALID_IMAGE_DIMENSION = "InvalidImageDimension"  # a side is not within the pixel limits
    INVALID_IMAGE_FORMAT = "InvalidImageFormat"  # empty, truncated or undecodable bytes
    NOT_FOUND = "NotFound"  # the path or URL does not exist
    FETCH_FAILED = "FetchFailed"  # reading the bytes failed after retries (transient)
    TIMEOUT = "Timeout"  # reading the bytes took longer than the timeout (transient)
    ACCESS_DENIED = "AccessDenied"  # HTTP 401/403, an object store's 403, a local permission error
    INVALID_MANIFEST_ROW = "InvalidManifestRow"  # no id, no image, or a source the policy refuses
    DUPLICATE_ID = "DuplicateId"  # the id was already seen earlier in the manifest
    INVALID_TEXT = "InvalidText"  # a query text outside the word limits, or empty
    EMBEDDING_NOT_FINITE = "EmbeddingNotFinite"  # the model returned NaN or infinity
    ENCODE_FAILED = "EncodeFailed"  # the model raised an exception on this row alone
    WORKER_CRASHED = "WorkerCrashed"  # the worker process died on this row in every attempt
    RESOURCE_EXHAUSTED = "ResourceExhausted"  # out of memory decoding the row, also when retried alone
    PREPROCESS_FAILED = "PreprocessFailed"  # a decoded image could not be resized (a defect: report it)
    # A video row: not a readable video container, no video stream, undecodable or truncated data.
    INVALID_VIDEO_FORMAT = "InvalidVideoFormat"
    VIDEO_TOO_LONG = "VideoTooLong"  # the video lasts longer than limits.max_video_seconds


# Errors worth retrying on a later run (resume mode); the others are permanent until --retry-errors.
# AccessDenied is permanent on purpose: a 403 does not go away by asking again, and every rerun would
# otherwise repeat the requests of a whole forbidden bucket.
TRANSIENT_CODES = frozenset({ErrorCode.FETCH_FAILED, ErrorCode.TIMEOUT})
# The manifest's own verdicts: a rerun gives the same answer, so they are never retried.
MANIFEST_CODES = frozenset({ErrorCode.INVALID_MANIFEST_ROW, ErrorCode.DUPLICATE_ID})


def retryable(code: str, retry_errors: bool) -> bool:
    """Whether an error row is written again: transient codes on resume, all but the manifest's with
    --retry-errors."""
    return code not in MANIFEST_CODES and (retry_errors or code in TRANSIENT_CODES)


class EmbeddingError(Exception):
    """A problem with one input, carrying its error code."""

    def __init__(self, code: ErrorCode, message: str, attempts: int = 1):
        super().__init__(f"{code}: {message}")
        self.code = ErrorCode(code)
        self.message = message
        self.attempts = attempts  # fetch attempts made before giving up


class ConfigError(Exception):
    """A bad config, manifest layout or model version: raised at start, before any work."""


class SinkError(RuntimeError):
    """A sink could not be written (database down, auth refused, a table of another version): the
    embeddings are committed, and the next run or `embedding sink` brings the sink up to date."""
