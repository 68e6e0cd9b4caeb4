"""What a sink does, and opening the sinks a config names.

A sink holds one table per model version, with the rows of embedding.sinks.rows and a record of the units
it holds (unit id -> the digest of its commit marker). Its writes are keyed by id and its records by unit,
so writing a unit again (a rerun after a kill at any step) leaves each id once, with the vector of the
committed unit. A table records the model version and its identity (architecture, weights checksum,
dimension): vectors of another version are refused, never mixed into it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import pyarrow as pa

from embedding.errors import ConfigError, EmbeddingError, SinkError


def table_name(template: str, version: str) -> str:
    """The sink's table of a model version: the template with {version} filled in as a plain identifier."""
    plain = "".join(c if c.isalnum() else "_" for c in version.lower())
    return template.format(version=plain)


class Sink(ABC):
    """One configured sink, opened for one model version (in the driver, or in a task that writes)."""

    name: str
    table: str

    @abstractmethod
    def prepare(self, identity: dict[str, Any], schema: pa.Schema) -> None:
        """Create the table (and its unit records) if missing; refuse one of another version or identity."""

    @abstractmethod
    def held(self) -> dict[str, str]:
        """The units the table holds: unit id -> marker digest."""

    @abstractmethod
    def write(self, unit: str, digest: str, rows: pa.Table) -> None:
        """Hold exactly these rows for the unit (upserted by id; its other rows removed), and record it."""

    @abstractmethod
    def retire(self, units: list[str]) -> None:
        """Remove the units' rows and records (rows moved to another unit since are kept)."""

    @abstractmethod
    def finish(self) -> None:
        """After a run's writes: build the vector index the config asks for, if it is missing."""

    @abstractmethod
    def nearest(
        self, vector: np.ndarray, k: int, filters: dict[str, str]
    ) -> list[tuple[float, dict[str, Any]]]:
        """The k rows of best cosine to a unit vector, as (cosine, metadata) with the index's metadata keys
        (image_id, uri, the carried columns; frame_time_s and frame_index for a video's frames). Filters:
        a carried column equals the value (a list column contains it)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def check_identity(name: str, table: str, version: str, identity: dict, found: dict) -> None:
    """Refuse a table that holds another version's vectors (or another model under the same name)."""
    if found.get("model_version") != version:
        raise ConfigError(
            f"sink {name}: table {table} holds vectors of model version '{found.get('model_version')}', "
            f"not '{version}'; vectors of two versions never share a table (set the sink's table template)"
        )
    theirs = found.get("identity") or {}
    for key in ("architecture", "weights_sha256", "dim"):
        if key in theirs and key in identity and theirs[key] != identity[key]:
            raise ConfigError(
                f"sink {name}: table {table} holds vectors of another model ({key} {theirs[key]!r}, this "
                f"run's {identity[key]!r}); refusing to mix them"
            )


def as_metadata(row: dict[str, Any]) -> dict[str, Any]:
    """A sink's row (without its vector) with the index's metadata keys: a frame is held under its video's
    id, with its time and index."""
    meta = {k: v for k, v in row.items() if k not in ("id", "unit_id", "model_version", "embedding")}
    if row.get("video_id") is not None:
        meta["image_id"], meta["frame_index"] = row["video_id"], int(str(row["id"]).rsplit("#", 1)[1])
    else:
        meta["image_id"] = row["id"]
    meta.pop("video_id", None)
    for fixed in ("width", "height", "content_sha256"):  # what the index keeps out of its metadata
        meta.pop(fixed, None)
    return meta


def failure(name: str, error: BaseException) -> SinkError:
    """A one-line SinkError that says which sink failed and why (never a password: messages of drivers
    name the host and the user at most)."""
    if isinstance(error, EmbeddingError | ConfigError | SinkError):
        return SinkError(str(error))
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return SinkError(f"sink {name}: {first}")
