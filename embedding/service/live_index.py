"""The index of one model version as a search replica holds it: loaded like `embedding search` loads it
(memory-mapped), and swapped for a rebuilt one (a new `build_id` in index.json) while requests go on.

A rebuild writes a new build folder, then index.json, then removes the old builds (embedding.index.store).
Requests that hold the old `Index` finish on it (its memory-mapped files stay readable after removal);
the next requests get the new one. A load that fails (a rebuild in progress, files removed meanwhile)
keeps the current index and is tried again at the next poll.

`find_row` and `facets` answer questions the index module does not (yet): where an image id is, and which
values a carried column holds. They belong in embedding/index/ and can move there as they are.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.index.ranking import plain
from embedding.index.rowmask import kind_of
from embedding.index.search import Candidate, Index
from embedding.index.store import index_dir, local_folder, read_manifest

log = logging.getLogger(__name__)

FACET_VALUES = 100  # the most frequent values of a column offered as filters
FACET_SKIP = (
    "image_id",
    "uri",
    "caption",
    "frame_time_s",
    "frame_index",
)  # free text or unique per row: no use as a filter


def find_row(index: Index, image_id: str, frame_index: int | None = None) -> Candidate | None:
    """Where an image id is in the index (its shard and row), or None. A video's id names its frames:
    `frame_index` picks one (else its first frame in the index)."""
    for number, shard in enumerate(index.shards):
        hits = pc.equal(shard.meta.column("image_id"), pa.scalar(image_id, pa.string()))
        if frame_index is not None and "frame_index" in shard.meta.column_names:
            hits = pc.and_(
                hits, pc.equal(shard.meta.column("frame_index"), pa.scalar(frame_index, pa.int32()))
            )
        rows = shard.live(np.flatnonzero(pc.fill_null(hits, False).to_numpy(zero_copy_only=False)))
        if len(rows):  # a retired row is not in the index any more
            return Candidate(cosine=1.0, shard=number, row=int(rows[0]))
    return None


def _value_counts(index: Index, column: str) -> Counter[str] | None:
    """How often each value of a string (or list of strings) column occurs; None for other types."""
    counts: Counter[str] = Counter()
    for shard in index.shards:
        if column not in shard.meta.column_names:
            continue
        data = shard.meta.column(column)
        if len(shard.retired):
            data = data.filter(pa.array(shard.live_mask()))
        if pa.types.is_list(data.type) or pa.types.is_large_list(data.type):
            data = pc.list_flatten(data)
        if not (pa.types.is_string(data.type) or pa.types.is_large_string(data.type)):
            return None
        for item in pc.value_counts(data.drop_null()).to_pylist():
            counts[item["values"]] += item["counts"]
    return counts


def facets(index: Index, limit: int = FACET_VALUES) -> dict[str, list[dict[str, Any]]]:
    """Per carried column that works as a filter, its most frequent values and their counts.

    A column works as a filter when it holds strings (or lists of them) that repeat: a column with a
    value per row (a caption, a title) does not.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for column in index.manifest.metadata_columns:
        counts = None if column in FACET_SKIP else _value_counts(index, column)
        if counts and len(counts) <= max(limit, index.manifest.rows // 2):
            found[column] = [{"value": v, "count": n} for v, n in counts.most_common(limit)]
    return found


def ranges(index: Index) -> dict[str, dict[str, Any]]:
    """Per carried number, date or timestamp column, its kind and the least and greatest live value
    (dates and times in ISO form): what the page's range pickers offer."""
    found: dict[str, dict[str, Any]] = {}
    for column in index.manifest.metadata_columns:
        if column in FACET_SKIP:
            continue
        low = high = None
        kind = "other"
        for shard in index.shards:
            if column not in shard.meta.column_names:
                continue
            data = shard.meta.column(column)
            kind = kind_of(data.type)
            if kind not in ("number", "date", "timestamp"):
                break
            if len(shard.retired):
                data = data.filter(pa.array(shard.live_mask()))
            bounds = pc.min_max(data).as_py()
            if bounds["min"] is not None:
                low = bounds["min"] if low is None else min(low, bounds["min"])
                high = bounds["max"] if high is None else max(high, bounds["max"])
        if kind in ("number", "date", "timestamp") and low is not None:
            found[column] = {"type": kind, "min": plain(low), "max": plain(high)}
    return found


class LiveIndex:
    """The current index of one version, reloaded in the background when a new build appears."""

    def __init__(self, cfg: Config, version: str):
        self.version = version
        self.folder = index_dir(cfg.output.root, version)
        self.options = cfg.output.storage_options
        self.index: Index | None = None
        self.facets: dict[str, list[dict[str, Any]]] = {}
        self.ranges: dict[str, dict[str, Any]] = {}
        self.problem: str | None = None  # why there is no index, or why the last reload failed
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Load the build index.json names if it is not the one held; True when it swapped."""
        try:
            manifest = read_manifest(self.folder, self.options)
            if self.index is not None and manifest.build_id == self.index.manifest.build_id:
                return False
            index = Index.load(local_folder(self.folder, manifest, self.options), manifest)
            index.check_version(self.version)
            found, bounds = facets(index), ranges(index)
        except (ConfigError, OSError, ValueError) as exc:
            self.problem = str(exc)
            if self.index is not None:
                log.warning("index of %s not reloaded (kept build %s): %s", self.version, self.build_id, exc)
            return False
        # One assignment each: a request reads either the old index or the new one, never a mix.
        self.facets, self.ranges = found, bounds
        self.index = index
        self.problem = None
        log.info("serving index build %s of %s (%d rows)", manifest.build_id, self.version, manifest.rows)
        return True

    @property
    def build_id(self) -> str | None:
        return self.index.manifest.build_id if self.index is not None else None

    def watch(self, every_s: float) -> None:
        """Poll index.json every `every_s` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(every_s):
                self.refresh()

        self._poller = threading.Thread(target=loop, name=f"index-poll-{self.version}", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
