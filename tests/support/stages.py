"""Encoder stages for fault tests (used through inference.stage_class): poison rows, a slow model."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from embedding.stages.encode import ImageEncodeStage

POISON_ID = "poison"


class RaisingStage(ImageEncodeStage):
    """The model raises whenever the poison row is among the rows it encodes."""

    def _inputs(self, batch: pa.Table, rows: list[int]) -> Callable[[list[int]], np.ndarray]:
        encode = super()._inputs(batch, rows)
        ids = batch.column("id").to_pylist()

        def guarded(picked: list[int]) -> np.ndarray:
            if any(ids[i] == POISON_ID for i in picked):
                raise RuntimeError("planted poison row")
            return encode(picked)

        return guarded


class CrashingStage(ImageEncodeStage):
    """The encoder process dies whenever a batch holds a poison row (an id that starts with "poison")."""

    def process(self, batch: pa.Table) -> pa.Table:
        if any(i and i.startswith(POISON_ID) for i in batch.column("id").to_pylist()):
            os._exit(1)
        return super().process(batch)


class FailingStage(ImageEncodeStage):
    """The stage itself raises whenever a batch holds a poison row: not a model error (an error row) but
    a failed task, as a bug or a broken library would make."""

    def process(self, batch: pa.Table) -> pa.Table:
        if any(i and i.startswith(POISON_ID) for i in batch.column("id").to_pylist()):
            raise RuntimeError("planted failure of the whole stage")
        return super().process(batch)


class SlowStage(ImageEncodeStage):
    """A slow model (0.2 s a batch), so a test can act while the encoder runs."""

    def process(self, batch: pa.Table) -> pa.Table:
        import time

        time.sleep(0.2)
        return super().process(batch)


class BlockingStage(ImageEncodeStage):
    """Holds its first batch until the file named by EMBEDDING_TEST_RELEASE exists (a planted hook: a test
    acts while a run is certainly in progress, without racing a timer)."""

    def process(self, batch: pa.Table) -> pa.Table:
        import time

        release = os.environ["EMBEDDING_TEST_RELEASE"]
        while not os.path.exists(release):
            time.sleep(0.05)
        return super().process(batch)
