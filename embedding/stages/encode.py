"""The model stages: uint8 pixels or texts in, unit vectors out.

`Encoder` loads a model version once and encodes batches; it is used directly by the single-item API and
search. `ImageEncodeStage` and `TextEncodeStage` are the Ray Data actor classes of the job: each loads its
model once in `__init__` and handles one batch of packed units in `__call__` (`process` does the work on
their stream rows, and is what a custom `inference.stage_class` overrides), turning model failures into error
rows.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from embedding.config import InferenceConfig, ModelConfig
from embedding.errors import ConfigError, ErrorCode
from embedding.models.loading import LoadedModel, load_model, resolve_device
from embedding.stages.rows import (
    each_unit,
    encode_timing,
    fail_rows,
    pending_rows,
    pixels_of,
    with_embeddings,
)

log = logging.getLogger(__name__)


class Encoder:
    """One model version on one device: normalises uint8 pixels there and returns unit vectors."""

    def __init__(self, version: str, model_cfg: ModelConfig, inference: InferenceConfig):
        threads = inference.torch_threads
        if threads is None and resolve_device(inference.device).type == "cpu":
            # Ray caps an actor's threads at its num_cpus; on CPU the model is usually the bottleneck
            # and the decode tasks wait on it (backpressure), so it gets every core of the machine.
            threads = len(os.sched_getaffinity(0))
        if threads:
            torch.set_num_threads(threads)
        self.loaded: LoadedModel = load_model(version, model_cfg, inference.device, inference.precision)
        # open_clip's model: torch types the encode_image / encode_text attributes of a Module loosely.
        self._model: Any = self.loaded.model
        self.version = version
        self.batch_size = inference.batch_size
        prep = self.loaded.preprocess
        device = self.loaded.device
        self._mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
        width = self.encode_texts(["a"]).shape[1]  # one word: the output width, checked before any row
        if width != self.dim:
            raise ConfigError(
                f"model version '{version}' outputs vectors of {width} dimensions but its dim is {self.dim}; "
                f"set dim: {width}"
            )

    @property
    def dim(self) -> int:
        return self.loaded.spec.dim

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float32, L2-normalised (rows may be non-finite; callers check)."""
        out = []
        for start in range(0, len(pixels), self.batch_size):
            # A copy: the pixels may be a read-only view of an Arrow buffer, which torch must not alias.
            chunk = torch.from_numpy(np.array(pixels[start : start + self.batch_size]))
            # uint8 crosses to the device (4x less traffic than float); normalisation happens there.
            x = chunk.to(self.loaded.device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = ((x - self._mean) / self._std).to(self.loaded.dtype)
            out.append(_normalise(self._model.encode_image(x)))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, D) float32, L2-normalised; the tokenizer truncates to the context length."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.loaded.tokenizer(list(texts[start : start + self.batch_size]))
            out.append(_normalise(self._model.encode_text(tokens.to(self.loaded.device))))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True)).cpu().numpy()


@dataclass
class _Outcome:
    vectors: np.ndarray  # (N, D), zeros where failed
    failed: dict[int, tuple[ErrorCode, str]]  # row position -> error


def _encode_isolating(encode: Callable[[list[int]], np.ndarray], rows: list[int], dim: int) -> _Outcome:
    """Encode rows together; if the model raises, split the batch and retry so only bad rows fail."""
    vectors = np.zeros((len(rows), dim), np.float32)
    failed: dict[int, tuple[ErrorCode, str]] = {}

    def run(positions: list[int]) -> None:
        try:
            result = encode([rows[p] for p in positions])
        except Exception as exc:
            if len(positions) == 1:
                failed[positions[0]] = (
                    ErrorCode.ENCODE_FAILED,
                    f"the model raised {type(exc).__name__}: {exc}",
                )
                return
            half = len(positions) // 2
            run(positions[:half])
            run(positions[half:])
            return
        vectors[positions] = result

    if rows:
        run(list(range(len(rows))))
    for position in np.flatnonzero(~np.isfinite(vectors).all(axis=1)):
        failed.setdefault(
            int(position), (ErrorCode.EMBEDDING_NOT_FINITE, "the model returned NaN or infinity")
        )
    return _Outcome(vectors, failed)


class _EncodeStage(ABC):
    """Shared body of the image and text stages: encode the rows that have no error yet."""

    stage_name = "encode"

    def __init__(self, version: str, model_cfg: ModelConfig, inference: InferenceConfig):
        self.encoder = Encoder(version, model_cfg, inference)
        # How long the loaded model waited for input: from here to the first batch, then between batches.
        self._last_end = time.time()
        log.info("encoder for %s loaded on %s (pid %d)", version, self.encoder.loaded.device, os.getpid())

    @abstractmethod
    def _inputs(self, batch: pa.Table, rows: list[int]) -> Callable[[list[int]], np.ndarray]:
        """A function from picked row positions of the batch to their vectors."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data stage: packed units in (embedding.stages.rows.pack), the same units with vectors out."""
        return each_unit(batch, self.process)

    def process(self, batch: pa.Table) -> pa.Table:
        """Encode the stream rows of one batch (any number of units); model failures become error rows."""
        started = time.time()
        waited = started - self._last_end
        pending = pending_rows(batch)
        encode = self._inputs(batch, pending)
        outcome = _encode_isolating(encode, pending, self.encoder.dim)
        batch = fail_rows(batch, {pending[p]: err for p, err in outcome.failed.items()}, self.stage_name)
        batch = with_embeddings(batch, pending, outcome.vectors, self.encoder.dim)
        self._last_end = ended = time.time()
        return encode_timing(batch, started, ended, waited)


class ImageEncodeStage(_EncodeStage):
    def _inputs(self, batch: pa.Table, rows: list[int]) -> Callable[[list[int]], np.ndarray]:
        pixels = pixels_of(batch, self.encoder.loaded.preprocess.size)
        return lambda picked: self.encoder.encode_pixels(pixels[picked])


class TextEncodeStage(_EncodeStage):
    def _inputs(self, batch: pa.Table, rows: list[int]) -> Callable[[list[int]], np.ndarray]:
        texts = batch.column("text").to_pylist()
        return lambda picked: self.encoder.encode_texts([texts[i] for i in picked])
