"""The output layout of one model version, and how a unit is committed.

    <root>/embeddings/model_version=<v>/part-<unit>.parquet        (text: text_embeddings/)
    <root>/errors/model_version=<v>/part-<unit>.parquet            (text: text_errors/)
    <root>/_state/<kind>/model_version=<v>/commits/<unit>.json     commit markers
    <root>/_state/<kind>/model_version=<v>/staging/<unit>/         files being written

A unit is committed in four steps: both files are written under staging/, a READY file is written (the
commit point), both are moved into place, then the marker is written and staging/ removed. A crash before
READY leaves only staging files, which the next run deletes; a crash after READY is rolled forward by the
next run (`recover`). Readers and the index see only units with a marker. Plain Parquet readers ignore
`_state/` (leading underscore), so they never see a file that is being written.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

TABLES = {"image": ("embeddings", "errors"), "text": ("text_embeddings", "text_errors")}


@dataclass
class Partition:
    """One kind (image or text) and one model version under an output root."""

    root: str
    kind: str
    version: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self.base = url_to_fs(self.root, **self.storage_options)  # base: the root, no protocol
        self.embeddings_table, self.errors_table = TABLES[self.kind]

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
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple | list) else self.fs.protocol
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    # --- committing ---
    def commit(self, unit_id: str, embeddings: pa.Table, errors: pa.Table, marker: dict[str, Any]) -> None:
        """Write both files of a unit and commit it atomically (see the module docstring)."""
        staging = self.staging_dir(unit_id)
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)
        self.fs.makedirs(staging, exist_ok=True)
        for table, data in ((self.embeddings_table, embeddings), (self.errors_table, errors)):
            with self.fs.open(posixpath.join(staging, f"{table}.parquet"), "wb") as f:
                pq.write_table(data, f, compression=marker.get("compression", "zstd"))
        with self.fs.open(posixpath.join(staging, "READY"), "w") as f:
            f.write(json.dumps(marker))
        self._roll_forward(unit_id)

    def _roll_forward(self, unit_id: str) -> None:
        staging = self.staging_dir(unit_id)
        ready = posixpath.join(staging, "READY")
        with self.fs.open(ready, "r") as f:
            marker = json.load(f)
        for table in (self.embeddings_table, self.errors_table):
            staged = posixpath.join(staging, f"{table}.parquet")
            if self.fs.exists(staged):  # absent when a crash came after this move
                self.fs.makedirs(self.table_dir(table), exist_ok=True)
                self.fs.mv(staged, self.part_path(table, unit_id))
        self.fs.makedirs(posixpath.dirname(self.marker_path(unit_id)), exist_ok=True)
        with self.fs.open(self.marker_path(unit_id), "w") as f:
            f.write(json.dumps(marker, indent=1))
        self.fs.rm(staging, recursive=True)

    def recover(self) -> tuple[int, int]:
        """Finish commits that passed READY and delete the rest of staging/; returns (rolled, dropped)."""
        staging_root = posixpath.join(self.state_dir, "staging")
        rolled = dropped = 0
        if not self.fs.exists(staging_root):
            return 0, 0
        for path in self.fs.ls(staging_root, detail=False):
            unit_id = posixpath.basename(path.rstrip("/"))
            if self.fs.exists(posixpath.join(path, "READY")):
                self._roll_forward(unit_id)
                rolled += 1
            else:
                self.fs.rm(path, recursive=True)
                dropped += 1
        return rolled, dropped

    # --- reading ---
    def markers(self) -> dict[str, dict[str, Any]]:
        """Commit markers by unit id: the committed units of this partition."""
        commits = posixpath.join(self.state_dir, "commits")
        if not self.fs.exists(commits):
            return {}
        paths = [p for p in self.fs.ls(commits, detail=False) if p.endswith(".json")]
        out = {}
        for raw in self.fs.cat(paths).values() if paths else ():
            marker = json.loads(raw)
            out[marker["unit_id"]] = marker
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

    def delete_all(self) -> None:
        """Remove every file of this partition (tables and state)."""
        for path in (
            self.table_dir(self.embeddings_table),
            self.table_dir(self.errors_table),
            self.state_dir,
        ):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)


def shadow_partition(target: Partition, run_id: str) -> Partition:
    """Where an overwrite run writes, beside the partition it will replace once everything is committed."""
    root = target.url(
        posixpath.join(target.base, "_state", "overwrite", f"{target.kind}-{target.version}-{run_id}")
    )
    return Partition(
        root=root, kind=target.kind, version=target.version, storage_options=target.storage_options
    )


def _swap_dirs(target: Partition, shadow: Partition) -> list[tuple[str, str]]:
    tables = (target.embeddings_table, target.errors_table)
    pairs = [(shadow.table_dir(t), target.table_dir(t)) for t in tables]
    return [*pairs, (shadow.state_dir, target.state_dir)]


def replace_with(target: Partition, shadow: Partition) -> None:
    """Swap a committed shadow partition in for the target; idempotent, `recover_overwrites` finishes it.

    A SWAP file marks the point of no return; then, folder by folder, the old one goes to trash/ and the
    new one takes its place.
    """
    fs = target.fs
    with fs.open(posixpath.join(shadow.base, "SWAP"), "w") as f:
        f.write("swap in progress")
    trash = posixpath.join(shadow.base, "trash")
    for i, (new, old) in enumerate(_swap_dirs(target, shadow)):
        if not fs.exists(new):
            continue  # moved before a crash
        if fs.exists(old):
            dest = posixpath.join(trash, str(i))
            if fs.exists(dest):
                fs.rm(dest, recursive=True)
            fs.makedirs(trash, exist_ok=True)
            fs.mv(old, dest, recursive=True)
        fs.makedirs(posixpath.dirname(old), exist_ok=True)
        fs.mv(new, old, recursive=True)
    fs.rm(shadow.base, recursive=True)


def recover_overwrites(target: Partition) -> None:
    """Finish swaps that passed their SWAP mark; delete overwrite runs that never got there."""
    fs = target.fs
    folder = posixpath.join(target.base, "_state", "overwrite")
    if not fs.exists(folder):
        return
    prefix = f"{target.kind}-{target.version}-"
    for path in fs.ls(folder, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if not name.startswith(prefix):
            continue
        shadow = shadow_partition(target, name[len(prefix) :])
        if fs.exists(posixpath.join(path, "SWAP")):
            replace_with(target, shadow)
        else:
            fs.rm(path, recursive=True)
