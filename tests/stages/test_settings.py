"""The stages' settings travel to workers as they are: the output partition (with its object-store options)
survives pickling, and each process opens its own filesystem."""

from __future__ import annotations

import pickle

import pyarrow as pa

from embedding.stages.read import ReadSettings
from embedding.stages.write import WriteSettings
from embedding.store.partition import Partition
from embedding.store.schemas import OutputSchemas


def test_read_and_write_settings_survive_pickling_with_s3_options() -> None:
    options = {"key": "id", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    partition = Partition("s3://bucket/out", "image", "demo", options)
    schemas = OutputSchemas("image", 8, "float32", [pa.field("caption", pa.string())], {"run_id": "r"})
    read = ReadSettings(["caption"], True, False, {"s3": options}, partition, retry_errors=True)
    write = WriteSettings(schemas, partition, "zstd")

    read2, write2 = pickle.loads(pickle.dumps((read, write)))

    assert read2 == read and write2 == write
    for settings in (read2, write2):
        moved = settings.partition
        assert (moved.root, moved.kind, moved.version, moved.storage_options) == (
            "s3://bucket/out",
            "image",
            "demo",
            options,
        )
        assert moved.base == partition.base and moved.errors_table == "errors"
        assert moved.part_path("embeddings", "u1") == partition.part_path("embeddings", "u1")
    assert read2.kind == "image" and write2.schemas.embeddings() == schemas.embeddings()
