"""The encoder deployment: one per served model version, batching concurrent requests into model calls.

It holds the job's own `Encoder` (the same model, device, precision and normalisation as the batch job)
and decodes image bytes with the job's `decode` and the version's preprocessing, so one input gives the
same vector online and in the job. `@serve.batch` merges requests that arrive within
`service.encoder.batch_wait_timeout_s` into one model call of up to `max_batch_size`; with
`service.encoder.batching: false` every request is encoded alone (batch size 1).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
from ray import serve

from embedding.api import checked_vector, encoder_for, preprocess_for
from embedding.config import Config
from embedding.errors import EmbeddingError
from embedding.images import ImageLimits, decode
from embedding.service.wire import from_embedding_error, reply

# Placeholders: __init__ sets the configured batch size and wait on each replica.
_BATCH = {"max_batch_size": 32, "batch_wait_timeout_s": 0.01}


def batch_options(cfg: Config) -> tuple[int, float]:
    """(max batch size, wait in seconds) of the encoder deployment; batching off is (1, 0)."""
    svc = cfg.service.encoder
    return (svc.max_batch_size, svc.batch_wait_timeout_s) if svc.batching else (1, 0.0)


def replica_config(cfg: Config) -> Config:
    """The config an encoder replica loads its model with: torch threads from service.encoder."""
    svc = cfg.service.encoder
    threads = svc.torch_threads or max(1, math.ceil(svc.num_cpus))
    inference = cfg.inference.model_copy(update={"torch_threads": threads})
    return cfg.model_copy(update={"inference": inference})


@serve.deployment
class EncoderDeployment:
    """Texts and image bytes of one model version in, unit vectors (float32) out."""

    def __init__(self, cfg_json: str, version: str):
        cfg = replica_config(Config.model_validate_json(cfg_json))
        self.version = version
        self.encoder = encoder_for(cfg, version)
        self.prep = preprocess_for(self.encoder, cfg)
        self.limits = ImageLimits(cfg.limits.min_image_side, cfg.limits.max_image_side)
        size, wait = batch_options(cfg)
        for batched in (self._encode_texts, self._encode_pixels):
            batched.set_max_batch_size(size)
            batched.set_batch_wait_timeout_s(wait)

    async def text(self, text: str) -> dict[str, Any]:
        """One validated text -> reply(vector)."""
        return self._finished(await self._encode_texts(text))

    async def image(self, data: bytes) -> dict[str, Any]:
        """One image file's bytes (already under the byte limit) -> reply(vector)."""
        try:
            decoded = await asyncio.to_thread(decode, data, self.prep, self.limits)
        except EmbeddingError as exc:
            return reply(error=from_embedding_error(exc))
        return self._finished(await self._encode_pixels(decoded.pixels))

    def _finished(self, values: np.ndarray) -> dict[str, Any]:
        try:
            return reply(checked_vector(values, self.version).values)
        except EmbeddingError as exc:
            return reply(error=from_embedding_error(exc))

    @serve.batch(**_BATCH)
    async def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        # The model runs in a thread so that the replica keeps accepting (and batching) requests.
        return list(await asyncio.to_thread(self.encoder.encode_texts, texts))

    @serve.batch(**_BATCH)
    async def _encode_pixels(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        return list(await asyncio.to_thread(self.encoder.encode_pixels, np.stack(pixels)))
