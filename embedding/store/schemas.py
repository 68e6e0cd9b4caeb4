"""The output tables of a partition: their explicit schemas (plain Arrow types only), and casting stream
rows into them. Every Parquet file's schema metadata names the model version, architecture, weights
checksum, preprocessing, package version and run id (`file_metadata`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


def embedding_type(dim: int, dtype: str = "float32") -> pa.DataType:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.list_(pa.field("element", value, nullable=False), dim)


@dataclass(frozen=True)
class OutputSchemas:
    """The two tables of one partition; `file_metadata` goes into every Parquet file's schema metadata."""

    kind: str  # image | text
    dim: int
    dtype: str  # float32 | float16
    carried: list[pa.Field]
    file_metadata: dict[str, str]

    @property
    def id_column(self) -> str:
        return "image_id" if self.kind == "image" else "text_id"

    def embeddings(self) -> pa.Schema:
        fields = [
            pa.field(self.id_column, pa.string()),
            pa.field("embedding", embedding_type(self.dim, self.dtype)),
            pa.field("model_version", pa.dictionary(pa.int32(), pa.string())),
        ]
        if self.kind == "image":
            fields += [
                pa.field("uri", pa.string()),
                pa.field("width", pa.int32()),
                pa.field("height", pa.int32()),
                pa.field("content_sha256", pa.string()),
            ]
        else:
            fields.append(pa.field("text", pa.string()))
        return pa.schema(fields + self.carried, metadata=self.file_metadata)

    def video_frames(self) -> pa.Schema:
        """The frames of video rows (image partitions): one row per sampled frame, keyed by the video's id."""
        fields = [
            pa.field("video_id", pa.string()),
            pa.field("frame_time_s", pa.float64()),
            pa.field("frame_index", pa.int32()),
            pa.field("embedding", embedding_type(self.dim, self.dtype)),
            pa.field("model_version", pa.dictionary(pa.int32(), pa.string())),
            pa.field("uri", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
        ]
        return pa.schema(fields + self.carried, metadata=self.file_metadata)

    def errors(self) -> pa.Schema:
        where = pa.field("uri", pa.string()) if self.kind == "image" else pa.field("text", pa.string())
        fields = [
            pa.field(self.id_column, pa.string()),
            where,
            pa.field("error_code", pa.string()),
            pa.field("error_message", pa.string()),
            pa.field("stage", pa.string()),
            pa.field("attempts", pa.int32()),
            pa.field("source_file", pa.string()),
            pa.field("row_index", pa.int64()),
        ]
        return pa.schema(fields, metadata=self.file_metadata)


def _own_columns() -> frozenset[str]:
    """The columns an embeddings table has of its own, whatever the kind: a manifest column carried
    through may take none of their names."""
    tables = (OutputSchemas(kind, 1, "float32", [], {}).embeddings() for kind in ("image", "text"))
    return frozenset(name for schema in tables for name in schema.names)


OWN_COLUMNS = _own_columns()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast columns into an output schema (metadata included); absent columns are null."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def model_version_column(n: int, version: str) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([version]))


def file_metadata(values: dict[str, Any]) -> dict[str, str]:
    """Parquet key-value metadata: strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in values.items()}
