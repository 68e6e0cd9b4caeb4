"""The output layout of one model version, and how a unit is committed.

    <root>/embeddings/model_version=<v>/part-<unit>.parquet          (text: text_embeddings/)
    <root>/errors/model_version=<v>/part-<unit>.parquet              (text: text_errors/)
    <root>/video_frames/model_version=<v>/part-<unit>.parquet        units with video rows: their frames
    <root>/_state/<kind>/model_version=<v>/commits/<unit>.json       commit markers
    <root>/_state/<kind>/model_version=<v>/staging/<unit>/<attempt>/ files being written (by workers)
    <root>/_state/<kind>/model_version=<v>/identity.json             the model that made the vectors
    <root>/_state/<kind>/model_version=<v>/lease                      the one writer (embedding.store.lease)

Workers write a unit's two files under a staging attempt folder of their own. The driver commits it in three
steps: READY (the chosen attempt and the marker, written atomically: the commit point), both files moved into
place, then the marker written atomically and staging/<unit> removed. A crash before READY leaves only staging
files, which the next run deletes; a crash after READY is rolled forward by the next run (`recover`). Readers
and the index see only units with a marker; plain Parquet readers ignore `_state/` (leading underscore).
Every file a reader or a rerun may look at is written whole (embedding.store.files.write_atomic).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import secrets
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedding.store import faults
from embedding.store.files import filesystem, list_names, read_json, remove, to_url, write_json

log = logging.getLogger(__name__)

TABLES = {"image": ("embeddings", "errors"), "text": ("text_embeddings", "text_errors")}
FRAMES_TABLE = (
    "video_frames"  # image partitions: the frames of video rows (written only when a unit has some)
)


@dataclass(frozen=True)
class Marker:
    """A unit's commit marker, and the digest of its bytes (the index records it, to know what it holds)."""

    unit_id: str
    body: dict[str, Any]
    digest: str

    def __getitem__(self, key: str) -> Any:
        return self.body[key]


@dataclass
class Partition:
    """One kind (image or text) and one model version under an output root."""

    root: str
    kind: str
    version: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self.base = filesystem(self.root, self.storage_options)  # base: the root, no protocol
        self.embeddings_table, self.errors_table = TABLES[self.kind]

    def __reduce__(self) -> tuple:
        # Travels to workers as its four fields; each process opens its own filesystem.
        return (Partition, (self.root, self.kind, self.version, self.storage_options))

    @property
    def tables(self) -> tuple[str, str]:
        """The two tables every unit has."""
        return (self.embeddings_table, self.errors_table)

    @property
    def all_tables(self) -> tuple[str, ...]:
        """Every table a unit may have (image units with videos also have their frames)."""
        return (*self.tables, FRAMES_TABLE) if self.kind == "image" else self.tables

    # --- paths (without protocol; used with self.fs) ---
    def table_dir(self, table: str) -> str:
        return posixpath.join(self.base, table, f"model_version={self.version}")

    def part_path(self, table: str, unit_id: str) -> str:
        return posixpath.join(self.table_dir(table), f"part-{unit_id}.parquet")

    @property
    def state_dir(self) -> str:
        return posixpath.join(self.base, "_state", self.kind, f"model_version={self.version}")

    def marker_path(self, unit_id: str) -> str:
        return posixpath.join(self.state_dir, "commits", f"{unit_id}.json")

    def staging_dir(self, unit_id: str) -> str:
        return posixpath.join(self.state_dir, "staging", unit_id)

    def url(self, path: str) -> str:
        """A path of this filesystem as a URL that fsspec and pyarrow readers accept."""
        return to_url(self.fs, path)

    # --- committing ---
    def write_staged(self, unit_id: str, attempt: str, tables: dict[str, pa.Table], compression: str) -> str:
        """Write a unit's tables under a staging attempt folder (workers do this); returns the folder."""
        folder = posixpath.join(self.staging_dir(unit_id), attempt)
        self.fs.makedirs(folder, exist_ok=True)
        for name, table in tables.items():
            with self.fs.open(posixpath.join(folder, f"{name}.parquet"), "wb") as f:
                pq.write_table(table, f, compression=compression)
        return folder

    def commit(
        self,
        unit_id: str,
        embeddings: pa.Table,
        errors: pa.Table,
        marker: dict[str, Any],
        compression: str = "zstd",
    ) -> None:
        """Write a unit's two tables and commit them (where the tables are at hand: tests, tools)."""
        attempt = secrets.token_hex(6)
        tables = dict(zip(self.tables, (embeddings, errors), strict=True))
        self.write_staged(unit_id, attempt, tables, compression)
        self.commit_staged(unit_id, attempt, {"unit_id": unit_id, **marker})

    def commit_staged(self, unit_id: str, attempt: str, marker: dict[str, Any]) -> None:
        """Commit a staged attempt of a unit (see the module docstring)."""
        ready = posixpath.join(self.staging_dir(unit_id), "READY")
        write_json(self.fs, ready, {"attempt": attempt, "marker": marker}, fault="commit.ready")
        faults.point("commit.after_ready")
        self._roll_forward(unit_id, attempt, marker)

    def _roll_forward(self, unit_id: str, attempt: str, marker: dict[str, Any]) -> None:
        staged = posixpath.join(self.staging_dir(unit_id), attempt)
        for table in self.all_tables:
            source = posixpath.join(staged, f"{table}.parquet")
            if self.fs.exists(source):  # absent when a crash came after this move
                self.fs.makedirs(self.table_dir(table), exist_ok=True)
                self.fs.mv(source, self.part_path(table, unit_id))
                faults.point("commit.after_move")
        write_json(self.fs, self.marker_path(unit_id), marker, fault="commit.marker")
        remove(self.fs, self.staging_dir(unit_id), recursive=True)

    def recover(self) -> tuple[int, int]:
        """Finish commits that passed READY and delete the rest of staging/; returns (rolled, dropped).

        Only the holder of the partition's lease may call this: it deletes what a live run would be writing.
        """
        staging_root = posixpath.join(self.state_dir, "staging")
        rolled = dropped = 0
        for unit_id in list_names(self.fs, staging_root):
            ready = read_json(self.fs, posixpath.join(staging_root, unit_id, "READY"))
            if ready and {"attempt", "marker"} <= set(ready):
                self._roll_forward(unit_id, ready["attempt"], ready["marker"])
                rolled += 1
            else:
                remove(self.fs, posixpath.join(staging_root, unit_id), recursive=True)
                dropped += 1
        return rolled, dropped

    def retire(self, unit_ids: list[str]) -> None:
        """Remove committed units: the marker first (readers stop seeing the unit), then its files."""
        for unit_id in unit_ids:
            remove(self.fs, self.marker_path(unit_id))
            for table in self.all_tables:
                remove(self.fs, self.part_path(table, unit_id))

    def remove_orphans(self) -> int:
        """Delete part files without a marker (left by a run killed while retiring units); returns how many.

        Run after `recover`, under the lease: then every part file of a unit in commit has its marker.
        """
        committed = set(self.markers())
        removed = 0
        commits = posixpath.join(self.state_dir, "commits")
        for folder in (*(self.table_dir(t) for t in self.all_tables), commits):
            for name in list_names(self.fs, folder):
                unit_id = name.removeprefix("part-").removesuffix(".parquet")
                temporary = name.startswith(".") and name.endswith(".tmp")  # an atomic write cut short
                if temporary or (name.startswith("part-") and unit_id not in committed):
                    remove(self.fs, posixpath.join(folder, name))
                    removed += 1
        return removed

    # --- reading ---
    def markers(self) -> dict[str, Marker]:
        """Commit markers by unit id: the committed units of this partition.

        A marker that cannot be read (half-written by an older version) leaves its unit uncommitted; the log
        says so, and the next commit of that unit replaces it.
        """
        commits = posixpath.join(self.state_dir, "commits")
        names = [n for n in list_names(self.fs, commits) if n.endswith(".json")]
        out: dict[str, Marker] = {}
        if not names:
            return out
        raw = self.fs.cat([posixpath.join(commits, n) for n in names], on_error="return")
        for path, data in raw.items():
            unit_id = posixpath.basename(path).removesuffix(".json")
            try:
                body = json.loads(data)
                if body.get("unit_id") != unit_id:
                    raise ValueError("unit_id does not match the file name")
            except (TypeError, ValueError, AttributeError) as exc:
                log.warning(
                    "unit %s is treated as uncommitted: its marker %s is unreadable (%s)", unit_id, path, exc
                )
                continue
            out[unit_id] = Marker(unit_id, body, hashlib.sha256(data).hexdigest())
        return out

    def read(self, table: str, columns: list[str] | None = None, units: list[str] | None = None) -> pa.Table:
        """Rows of the committed units (all, or the given ones) of one table, with the unit's id."""
        units = sorted(self.markers()) if units is None else units
        parts = []
        for unit_id in units:
            part = pq.read_table(self.part_path(table, unit_id), columns=columns, filesystem=self.fs)
            parts.append(part.append_column("unit_id", pa.array([unit_id] * part.num_rows, pa.string())))
        if not parts:
            return pa.table({})
        return pa.concat_tables(parts, promote_options="default")

    # --- the model that made the vectors ---
    @property
    def identity_path(self) -> str:
        return posixpath.join(self.state_dir, "identity.json")

    def identity(self) -> dict[str, Any] | None:
        return read_json(self.fs, self.identity_path)

    def record_identity(self, identity: dict[str, Any]) -> None:
        write_json(self.fs, self.identity_path, identity)
