"""A stand-in encoder for driver benchmarks (`inference.stage_class: standin:InstantStage`): unit vectors at
once, no model, so what a run measures is the rest of the job. It works with the current stage API (packed
units, `process`) and with the one before it (stream rows in `__call__`), so one benchmark can run both."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from embedding.stages.encode import ImageEncodeStage
from embedding.stages.rows import append_columns, pending_rows, timing_columns, with_embeddings

DIM = 1024


class InstantStage(ImageEncodeStage):
    def __init__(self, version, model_cfg, inference):
        self._last_end = time.time()  # no model: nothing to load

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "rows" in batch.column_names:  # packed units: the base class unpacks and calls process()
            return super().__call__(batch)
        return self.process(batch)

    def process(self, batch: pa.Table) -> pa.Table:
        started = time.time()
        rows = pending_rows(batch)
        vectors = np.zeros((len(rows), DIM), np.float32)
        vectors[:, 0] = 1.0
        batch = with_embeddings(batch, rows, vectors, DIM)
        self._last_end = time.time()
        return append_columns(batch, timing_columns("encode", batch.num_rows, started, self._last_end))
