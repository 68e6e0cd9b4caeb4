"""The committed units an index is made of: their marker digests, files and rows, as the index stage
reads them from the partition, checked to be of one model version and identity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.index.fill import read_vectors
from embedding.models.identity import check_same, identity_for
from embedding.store.partition import FRAMES_TABLE, Partition


@dataclass
class Committed:
    """The committed units of a model version: their marker digests, files and rows."""

    digests: dict[str, str]  # unit id -> marker digest
    files: dict[str, list[tuple[str, int]]]  # unit id -> (part file, rows) of embeddings and frames
    identity: dict

    def rows(self, unit: str) -> int:
        return sum(n for _, n in self.files[unit])


def committed_units(cfg: Config, partition: Partition) -> Committed:
    version, root = cfg.model.version, cfg.output.root
    markers = partition.markers()
    if not markers:
        raise ConfigError(
            f"no committed embeddings of model version '{version}' under {root}: run `embedding run` first"
        )
    identity = partition.identity() or {}
    check_same(identity, identity_for(cfg), f"output {root} (model version '{version}')")
    files: dict[str, list[tuple[str, int]]] = {}
    for unit_id, marker in sorted(markers.items()):
        for table, count in (
            ("embeddings", marker["rows_embedded"]),
            (FRAMES_TABLE, marker.body.get("rows_frames", 0)),
        ):
            if count:
                files.setdefault(unit_id, []).append((partition.part_path(table, unit_id), count))
    if not files:
        raise ConfigError(f"model version '{version}' under {root} has no embedded rows to index")
    return Committed({u: markers[u].digest for u in files}, files, identity)


def check_versions(partition: Partition, files: list[str]) -> None:
    """One vector space per index: every file must be of the partition's model version."""
    for path in files:
        meta = pq.read_schema(path, filesystem=partition.fs).metadata or {}
        found = meta.get(b"model_version", b"").decode()
        if found and found != partition.version:
            raise ConfigError(
                f"cannot build one index over two model versions: {partition.url(path)} holds vectors of "
                f"'{found}', the index is for '{partition.version}'"
            )


def train_sample(partition: Partition, files: list[tuple[str, int]], size: int, seed: int) -> np.ndarray:
    """About `size` vectors drawn from whole files chosen at random (seeded)."""
    order = np.random.default_rng(seed).permutation(len(files))
    picked, total = [], 0
    for i in order:
        picked.append(files[i][0])
        total += files[i][1]
        if total >= size:
            break
    tables = [pq.read_table(p, columns=["embedding"], filesystem=partition.fs) for p in picked]
    vectors = read_vectors(pa.concat_tables(tables))
    if len(vectors) > size:
        vectors = vectors[np.random.default_rng(seed).choice(len(vectors), size, replace=False)]
    return vectors
