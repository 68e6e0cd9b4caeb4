"""The encoder deployment: one per served model version, a batch of texts or image files per call.

It holds the job's own `Encoder` (the same model, device, precision and normalisation as the batch job)
and decodes image bytes with the job's `decode` and the version's preprocessing, so one input gives the
same vector online and in the job. Batches are formed where requests arrive, by the ingress's
`serve.batch` (embedding.service.calls): requests that arrive within `service.encoder.batch_wait_timeout_s`
travel to this deployment as one call and run as one model call of up to `max_batch_size`. Forming them
there, not here, is what makes batching pay on a CPU: a call between deployments costs more than the demo
model's forward pass, and a batch pays it once. With `service.encoder.batching: false` every request is a
call of its own (batch size 1).
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import numpy as np
from ray import serve

from embedding.api import checked_vector, encoder_for, preprocess_for
from embedding.config import Config
from embedding.errors import EmbeddingError
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.service.wire import from_embedding_error, reply, vector_texts
from embedding.store import faults


def replica_config(cfg: Config) -> Config:
    """The config an encoder replica loads its model with: torch threads from service.encoder."""
    svc = cfg.service.encoder
    threads = svc.torch_threads or max(1, math.ceil(svc.num_cpus))
    inference = cfg.inference.model_copy(update={"torch_threads": threads})
    return cfg.model_copy(update={"inference": inference})


@serve.deployment
class EncoderDeployment:
    """A batch of validated texts, or of image files' bytes, in; a reply per item, in order: a unit vector
    (`vector`, float32, and `json`, the same as the hosted API's JSON array), or the error of an image that
    does not decode."""

    def __init__(self, cfg_json: str, version: str):
        cfg = replica_config(Config.model_validate_json(cfg_json))
        self.version = version
        self.encoder = encoder_for(cfg, version)
        self.prep = preprocess_for(self.encoder, cfg)
        self.limits = ImageLimits.from_config(cfg)
        # One model call at a time: calls arrive concurrently (a batch each), and tokenizers (Hugging Face's
        # fast ones) and device memory are not made for concurrent forward passes. Decoding runs outside it.
        self.model_lock = threading.Lock()

    async def texts(self, texts: list[str]) -> list[dict[str, Any]]:
        faults.point("encoder.call")  # a test's planted death of this replica in the middle of a call
        # The model runs in a thread so that the replica keeps accepting calls meanwhile.
        return await asyncio.to_thread(self._texts, texts)

    async def images(self, files: list[bytes]) -> list[dict[str, Any]]:
        """Image files' bytes (each already under the byte limit)."""
        faults.point("encoder.call")
        return await asyncio.to_thread(self._images, files)

    def _texts(self, texts: list[str]) -> list[dict[str, Any]]:
        with self.model_lock:
            vectors = self.encoder.encode_texts(texts)
        return self._finished(vectors)

    def _images(self, files: list[bytes]) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = [{} for _ in files]
        decoded: dict[int, np.ndarray] = {}
        for i, data in enumerate(files):
            try:
                decoded[i] = decode(data, self.prep, self.limits).pixels
            except EmbeddingError as exc:
                replies[i] = reply(error=from_embedding_error(exc))
        if decoded:
            with self.model_lock:
                vectors = self.encoder.encode_pixels(np.stack(list(decoded.values())))
            for i, answer in zip(decoded, self._finished(vectors), strict=True):
                replies[i] = answer
        return replies

    def _finished(self, vectors: np.ndarray) -> list[dict[str, Any]]:
        finite = np.isfinite(vectors).all(axis=1)
        texts = vector_texts(np.where(finite[:, None], vectors, 0))
        replies = []
        for values, text in zip(vectors, texts, strict=True):
            try:
                replies.append(reply({"vector": checked_vector(values, self.version).values, "json": text}))
            except EmbeddingError as exc:
                replies.append(reply(error=from_embedding_error(exc)))
        return replies
