"""Stand-ins for the model and for decoding, for benchmarks and tests of the rest of the job. None is on by
default; each is selected by config, and none imports torch (an actor of theirs starts in a fraction of a
second, and 16 of them fit on a laptop).

- `InstantStage` (`inference.stage_class: benchmarks.standin:InstantStage`): unit vectors at once, no model,
  so what a run measures is the rest of the job. It works with the current stage API (packed units) and
  with the one before it (stream rows in `__call__`), so one benchmark can run both.
- `GpuStandInStage` (`inference.stage_class: benchmarks.standin:GpuStandInStage`): a model on a GPU, as the
  CPU sees it: each batch of `inference.batch_size` rows is held for a wall time (`STANDIN_MS_PER_IMAGE`
  milliseconds per image, default 1: the target for ViT-H-14 fp16 on an H100) while the process sleeps, so
  it costs wall time and almost no CPU, as an actor feeding a GPU does. It returns deterministic unit
  vectors (from each row's id) of the demo model's width.
- `instant_decode` (`preprocess.stage_function: benchmarks.standin:instant_decode`): the decode stage's
  output (width, height, digest, pixels of the model's size, zeros) without decoding, where decode cost
  would hide the rest (a real decode of a 32 x 32 JPEG to the demo model's 64 x 64 pixels costs 0.16 ms of
  CPU a row; this, 0.004 ms). Width and height are the model's size, not the file's.

`STANDIN_MS_PER_IMAGE` is read where the actor runs: set it before the cluster (or local Ray) starts, as
Ray's worker processes inherit the environment of the process that started their node.
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib

import numpy as np
import pyarrow as pa

from embedding.stages.rows import each_unit, encode_timing, pending_rows, with_embeddings

DIM = 1024  # the demo model's width
MS_PER_IMAGE_ENV = "STANDIN_MS_PER_IMAGE"
DEFAULT_MS_PER_IMAGE = 1.0


def unit_vectors(ids: list[str | None], dim: int = DIM) -> np.ndarray:
    """A unit vector per id, the same for the same id in any process: two of its components set (0.6 and
    0.8) at positions taken from the id's CRC-32."""
    hashes = np.array([zlib.crc32((i or "").encode()) for i in ids], np.int64)
    a, b = hashes % dim, (hashes // dim) % dim
    vectors = np.zeros((len(ids), dim), np.float32)
    rows = np.arange(len(ids))
    vectors[rows, a] = 0.6
    vectors[rows, b] = np.where(a == b, 1.0, 0.8)  # one position: the one component is 1
    return vectors


class _StandIn:
    """An encoder stage (`inference.stage_class`) without a model: packed units in, units with vectors out,
    as embedding.stages.encode's stages do."""

    def __init__(self, version, model_cfg, inference):
        self.batch_size = inference.batch_size
        self._last_end = time.time()  # no model: nothing to load

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "rows" not in batch.column_names:  # stream rows: the stage API before packed units
            return self.process(batch)
        return each_unit(batch, self.process)

    def vectors(self, batch: pa.Table, rows: list[int]) -> np.ndarray:
        vectors = np.zeros((len(rows), DIM), np.float32)
        vectors[:, 0] = 1.0
        return vectors

    def process(self, batch: pa.Table) -> pa.Table:
        started = time.time()
        waited = started - self._last_end
        rows = pending_rows(batch)
        batch = with_embeddings(batch, rows, self.vectors(batch, rows), DIM)
        self._last_end = ended = time.time()
        return encode_timing(batch, started, ended, waited)


class InstantStage(_StandIn):
    """Unit vectors (all the same) at once."""


class GpuStandInStage(_StandIn):
    """Holds each batch of `inference.batch_size` rows for STANDIN_MS_PER_IMAGE ms a row, sleeping (a GPU's
    wall time, not the CPU's), and returns each row's unit vector of `unit_vectors`."""

    def __init__(self, version, model_cfg, inference):
        super().__init__(version, model_cfg, inference)
        self.s_per_image = float(os.environ.get(MS_PER_IMAGE_ENV, DEFAULT_MS_PER_IMAGE)) / 1000

    def vectors(self, batch: pa.Table, rows: list[int]) -> np.ndarray:
        for start in range(0, len(rows), self.batch_size):
            time.sleep(len(rows[start : start + self.batch_size]) * self.s_per_image)
        ids = batch.column("id").to_pylist()
        return unit_vectors([ids[i] for i in rows])


def instant_decode(batch: pa.Table, settings) -> pa.Table:
    """A decode stage (`preprocess.stage_function`) that decodes nothing: packed units in, the same units
    out with the columns embedding.stages.decode adds (the model's size as width and height, the inline
    bytes' SHA-256, zero pixels), so the encoder and the writer see what a real decode would give them."""
    from embedding.stages.decode import with_decoded_columns
    from embedding.stages.rows import pack, pixels_type, unpack

    out = []
    size = settings.prep.size
    for rows in unpack(batch):
        started = time.time()
        n = rows.num_rows
        pending = set(pending_rows(rows))
        inline = rows.column("image").to_pylist() if "image" in rows.column_names else [None] * n
        digest = [
            hashlib.sha256(data).hexdigest() if i in pending and data is not None else None
            for i, data in enumerate(inline)
        ]
        if "image" in rows.column_names:
            rows = rows.drop_columns(["image"])
        height = [size[0] if i in pending else None for i in range(n)]
        width = [size[1] if i in pending else None for i in range(n)]
        zeros = pa.py_buffer(np.zeros(n * size[0] * size[1] * 3, np.uint8))
        attempts = rows.schema.get_field_index("attempts")
        rows = rows.set_column(attempts, "attempts", rows.column("attempts").cast(pa.int32()))
        pixels = pa.FixedSizeBinaryArray.from_buffers(pixels_type(size), n, [None, zeros])
        out.append(with_decoded_columns(rows, width, height, digest, pixels, started))
    return pack(out)
