"""A committed unit's rows as every sink holds them: the Parquet tables' columns, one row per vector.

id              the image id; a video frame's is "<video id>#<frame index>" (one row per frame)
unit_id         the committed unit the row came from (what a rerun or a retirement goes by)
embedding       fixed_size_list<float32 | float16>[dim], a unit vector
model_version   the version's name (plain string)
uri, width, height, content_sha256
video_id, frame_time_s   null for images
...             the carried columns of the manifest (caption, tags, and the rest), as they are
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from embedding.store.partition import FRAMES_TABLE, Partition

FIXED_COLUMNS = ("id", "unit_id", "embedding", "model_version", "uri", "width", "height", "content_sha256")
FRAME_COLUMNS = ("video_id", "frame_time_s")


def _images(table: pa.Table) -> pa.Table:
    n = table.num_rows
    table = table.rename_columns(["id" if c == "image_id" else c for c in table.column_names])
    return table.append_column("video_id", pa.nulls(n, pa.string())).append_column(
        "frame_time_s", pa.nulls(n, pa.float64())
    )


def _frames(table: pa.Table) -> pa.Table:
    ids = pc.binary_join_element_wise(
        table.column("video_id"), pc.cast(table.column("frame_index"), pa.string()), "#"
    )
    return table.drop_columns(["frame_index"]).append_column("id", ids)


def unit_rows(partition: Partition, unit: str, frames: bool) -> pa.Table:
    """The rows of one committed unit: its embeddings, and its video frames (`frames`: it has some)."""
    parts = [_images(partition.read("embeddings", units=[unit]))]  # read() adds unit_id
    if frames:
        parts.append(_frames(partition.read(FRAMES_TABLE, units=[unit])))
    table = pa.concat_tables(parts, promote_options="default")
    version = pc.cast(table.column("model_version"), pa.string())
    table = table.set_column(table.column_names.index("model_version"), "model_version", version)
    carried = [c for c in table.column_names if c not in FIXED_COLUMNS + FRAME_COLUMNS]
    return table.select([*FIXED_COLUMNS, *FRAME_COLUMNS, *carried])
