"""Duplicate groups on disk: what `embedding duplicates` writes, and reading it back.

    <root>/duplicates/model_version=<v>/groups.parquet

One row per member of a group, groups in the order of their ids, members in the order of their image ids:

    group_id  int64    1, 2, ...: the groups ordered by their first member's image id
    image_id  string
    uri       string   nullable
    kind      string   "exact" (every member has one content digest) or "near"
    cosine    float32  this member's cosine to the group's first member (1.0 for the first)
    build_id  string   the index build the groups were computed from

The first member of a group is the one with the smallest image id: a rule that does not depend on the
search, the shards or the order of the committed units. Members joined through others (a ~ b ~ c) can
have a cosine to the first member under the threshold they were found with.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.store.files import filesystem, to_url, write_atomic

if TYPE_CHECKING:  # reading groups (the service's ingress) needs neither FAISS nor a loaded index
    from embedding.index.search import Index

GROUPS_FILE = "groups.parquet"
SCHEMA = pa.schema(
    [
        pa.field("group_id", pa.int64(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("cosine", pa.float32(), nullable=False),
        pa.field("build_id", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class DuplicateMember:
    image_id: str
    uri: str | None
    cosine: float  # to the group's first member

    def to_dict(self) -> dict[str, Any]:
        return {"imageId": self.image_id, "uri": self.uri, "cosine": self.cosine}


@dataclass(frozen=True)
class DuplicateGroup:
    group_id: int
    kind: str  # exact | near
    members: tuple[DuplicateMember, ...]  # the first has the smallest image id

    def to_dict(self) -> dict[str, Any]:
        """The group as camelCase JSON (the service's words)."""
        return {"groupId": self.group_id, "kind": self.kind, "members": [m.to_dict() for m in self.members]}


def duplicates_dir(root: str, version: str) -> str:
    return posixpath.join(root.rstrip("/"), "duplicates", f"model_version={version}")


def components(first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
    """The connected components of the graph whose edges are first[i] - second[i] (union-find, vectorised:
    pairs can number millions, one digest shared by a million rows included): each an ascending array of
    node ids, in the order of their smallest node."""
    if not len(first):
        return []
    nodes, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    a, b = inverse[: len(first)], inverse[len(first) :]
    parent = np.arange(len(nodes))
    while True:
        # Hook the root of each edge's larger end under the smaller one (parent[x] <= x always holds),
        low = np.minimum(parent[a], parent[b])
        np.minimum.at(parent, parent[a], low)
        np.minimum.at(parent, parent[b], low)
        # then point every node at its root, until the ends of every edge share one.
        while not np.array_equal(jumped := parent[parent], parent):
            parent = jumped
        if np.array_equal(parent[a], parent[b]):
            break
    order = np.argsort(parent, kind="stable")
    parts = np.split(order, np.flatnonzero(np.diff(parent[order])) + 1)
    return sorted((nodes[part] for part in parts), key=lambda part: int(part[0]))


def offsets(index: Index) -> np.ndarray:
    """The global row number of each shard's row 0 (and, last, the total): rows are numbered across shards."""
    return np.cumsum([0] + [shard.meta.num_rows for shard in index.shards]).astype(np.int64)


def make_groups(
    index: Index, parts: list[np.ndarray], digest_rows: np.ndarray, codes: np.ndarray
) -> list[DuplicateGroup]:
    """The groups of connected global rows, numbered and ordered as the module docstring says; a group is
    exact when every member has the same digest (`codes`: a number per digest of the ascending
    `digest_rows`), near otherwise. Done for all members at once: one group may hold a million."""
    if not parts:
        return []
    members = np.concatenate(parts)
    group = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
    starts = offsets(index)
    shard_of = np.searchsorted(starts, members, "right") - 1
    ids, uris = np.empty(len(members), object), np.empty(len(members), object)
    for number, shard in enumerate(index.shards):
        mine = np.flatnonzero(shard_of == number)
        local = pa.array(members[mine] - starts[number])
        ids[mine] = shard.meta.column("image_id").take(local).to_pylist()
        if "uri" in shard.meta.column_names:
            uris[mine] = shard.meta.column("uri").take(local).to_pylist()
    order = np.lexsort((ids.astype(str), group))
    members, group, ids, uris = members[order], group[order], ids[order], uris[order]
    bounds = np.flatnonzero(np.r_[True, group[1:] != group[:-1], True])
    first = members[np.repeat(bounds[:-1], np.diff(bounds))]
    cosine = np.empty(len(members), np.float32)
    for chunk in range(0, len(members), 65_536):
        part = slice(chunk, chunk + 65_536)
        mine, theirs = _vectors(index, starts, members[part]), _vectors(index, starts, first[part])
        cosine[part] = np.clip(cosines(mine, theirs), -1, 1)
    cosine[bounds[:-1]] = 1.0  # the first member itself, whatever float16 rounding says
    code = np.full(len(members), -1, np.int64)  # the member's digest, -1 for none
    if len(digest_rows):
        where = np.minimum(np.searchsorted(digest_rows, members), len(digest_rows) - 1)
        known = digest_rows[where] == members
        code[known] = codes[where[known]]
    lowest, highest = np.minimum.reduceat(code, bounds[:-1]), np.maximum.reduceat(code, bounds[:-1])
    exact = (lowest == highest) & (lowest >= 0)
    ids_list, uris_list, cosine_list = ids.tolist(), uris.tolist(), cosine.tolist()
    groups = []
    for rank, g in enumerate(np.argsort(ids[bounds[:-1]].astype(str), kind="stable")):
        members_of = range(bounds[g], bounds[g + 1])
        groups.append(
            DuplicateGroup(
                rank + 1,
                "exact" if exact[g] else "near",
                tuple(DuplicateMember(ids_list[i], uris_list[i], cosine_list[i]) for i in members_of),
            )
        )
    return groups


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row cosines of two arrays of vectors (stored float16 vectors are unit vectors only to 1e-3)."""
    dots = np.einsum("ij,ij->i", a, b)
    return dots / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _vectors(index: Index, starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The stored vectors of global rows, as float32, in their order."""
    out = np.empty((len(rows), index.manifest.dim), np.float32)
    shard_of = np.searchsorted(starts, rows, "right") - 1
    for number in np.unique(shard_of):
        mine = np.flatnonzero(shard_of == number)
        mine = mine[np.argsort(rows[mine], kind="stable")]  # ascending rows read the file in order
        out[mine] = index.shards[number].vectors[rows[mine] - starts[number]]
    return out


def write_groups(cfg: Config, groups: list[DuplicateGroup], build_id: str, about: dict[str, str]) -> str:
    """Write groups.parquet whole (a temporary file, then a rename; one PUT on object stores); returns its
    URL. `about` goes into the file's schema metadata (threshold, neighbours)."""
    members = [(g, m) for g in groups for m in g.members]
    metadata = {"model_version": cfg.model.version, "build_id": build_id, **about}
    table = pa.table(
        {
            "group_id": [g.group_id for g, _ in members],
            "image_id": [m.image_id for _, m in members],
            "uri": [m.uri for _, m in members],
            "kind": [g.kind for g, _ in members],
            "cosine": [m.cosine for _, m in members],
            "build_id": [build_id] * len(members),
        },
        schema=SCHEMA.with_metadata(metadata),
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    fs, base = filesystem(duplicates_dir(cfg.output.root, cfg.model.version), cfg.output.storage_options)
    path = posixpath.join(base, GROUPS_FILE)
    write_atomic(fs, path, buffer.getvalue())
    return to_url(fs, path)


def duplicate_groups(cfg: Config, version: str | None = None) -> list[DuplicateGroup]:
    """The groups `embedding duplicates` last wrote for a model version (cfg.model.version by default)."""
    version = version or cfg.model.version
    folder = duplicates_dir(cfg.output.root, version)
    fs, base = filesystem(folder, cfg.output.storage_options)
    path = posixpath.join(base, GROUPS_FILE)
    if not fs.exists(path):
        raise ConfigError(
            f"no duplicate groups of model version '{version}' in {folder}: find them with "
            "`embedding duplicates CONFIG` (after `embedding index CONFIG`)"
        )
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise ConfigError(
            f"{to_url(fs, path)} is not a duplicates file (no {', '.join(missing)}): "
            "write it anew with `embedding duplicates CONFIG`"
        )
    groups: list[DuplicateGroup] = []
    members: list[DuplicateMember] = []
    rows = table.select(["group_id", "image_id", "uri", "kind", "cosine"]).to_pylist()
    for number, row in enumerate(rows):
        members.append(DuplicateMember(row["image_id"], row["uri"], row["cosine"]))
        if number + 1 == len(rows) or rows[number + 1]["group_id"] != row["group_id"]:
            groups.append(DuplicateGroup(row["group_id"], row["kind"], tuple(members)))
            members = []
    return groups
