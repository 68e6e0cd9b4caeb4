"""Committed embeddings made from synthetic vectors, so index tests need no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedding.config import Config
from embedding.config_file import load_config
from embedding.store.partition import Partition
from embedding.store.schemas import OutputSchemas, embedding_type, file_metadata


def clustered(n: int, dim: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Unit vectors around fixed cluster centres (the same for every seed, so queries fall in the data)."""
    centres = np.random.default_rng(0).normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, clusters, n)] + rng.normal(scale=0.5 / np.sqrt(dim), size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(
    root: Path,
    vectors: np.ndarray,
    version: str = "demo",
    units: int = 8,
    tags: list[list[str]] | None = None,
    first: int = 0,
    extra: dict[str, pa.Array] | None = None,
) -> list[str]:
    """Commit vectors as embedding units of a partition, as the job would; returns the image ids.

    `first`: the number of the first image id and of the first unit (`unit<first + u>`), so that a test
    can commit more units later (an appended manifest file) or commit a unit again (a changed one).
    `extra`: more carried columns, a value per row (typed columns for filters).
    """
    extra = extra or {}
    n, dim = vectors.shape
    ids = [f"img-{first + i:05d}" for i in range(n)]
    tags = tags or [["even" if i % 2 == 0 else "odd", f"mod3-{i % 3}"] for i in range(n)]
    schemas = OutputSchemas(
        "image",
        dim,
        "float32",
        [
            pa.field("caption", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            *(pa.field(name, values.type) for name, values in extra.items()),
        ],
        file_metadata({"model_version": version}),
    )
    part = Partition(str(root), "image", version)
    for u, chunk in enumerate(np.array_split(np.arange(n), units)):
        rows = {
            "image_id": [ids[i] for i in chunk],
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors[chunk].reshape(-1)), type=embedding_type(dim)
            ),
            "model_version": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(len(chunk), np.int32)), pa.array([version])
            ),
            "uri": [f"/images/{ids[i]}.jpg" for i in chunk],
            "width": pa.array([100] * len(chunk), pa.int32()),
            "height": pa.array([100] * len(chunk), pa.int32()),
            "content_sha256": ["0" * 64] * len(chunk),
            "caption": [f"caption {ids[i]}" for i in chunk],
            "tags": [tags[i] for i in chunk],
            **{name: values.take(pa.array(chunk)) for name, values in extra.items()},
        }
        embeddings = pa.Table.from_pydict(rows, schema=schemas.embeddings())
        unit = f"unit{first + u:05d}"
        part.commit(
            unit,
            embeddings,
            schemas.errors().empty_table(),
            {"unit_id": unit, "rows_embedded": len(chunk), "rows_failed": 0, "errors_by_code": {}},
        )
    return ids


def _configs(root: Path):
    def make(**index: object) -> Config:
        overrides = [f"output.root={root}", "model.version=demo"]
        overrides += [f"index.{k}={v}" for k, v in index.items()]
        return load_config(None, overrides)

    return make


@pytest.fixture
def index_config(tmp_path: Path, ray_local):
    """Configs of an index on the shared local Ray (fills past index.local_rows run as Ray tasks)."""
    return _configs(tmp_path / "out")


@pytest.fixture
def local_index_config(tmp_path: Path):
    """Configs of an index filled in the test's own process: no Ray."""
    return _configs(tmp_path / "out")
