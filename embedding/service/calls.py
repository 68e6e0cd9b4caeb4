"""How the ingress calls the other deployments: their handles, the errors of a call, and batching.

Requests that arrive together travel to a version's encoder as one call, formed here by `@serve.batch`
(`service.encoder.max_batch_size` and `batch_wait_timeout_s`), and run there as one model call
(embedding.service.encoders). With `service.encoder.batching: false` every request is a call of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from embedding.config import Config
from embedding.service.encoders import batch_options
from embedding.service.wire import ApiError, too_many_requests, unwrap

BATCHES_IN_FLIGHT = 8  # per route and ingress replica: enough to keep several encoder replicas busy


def own_handles(bound: dict[str, DeploymentHandle]) -> dict[str, DeploymentHandle]:
    """The same deployments' handles, made in this process: a handle takes its transport (gRPC in Serve's
    high-throughput mode, else Ray actor calls) from the environment of the process that made it, and
    the bound ones were made by the process that built the application."""
    return {key: serve.get_deployment_handle(h.deployment_name, h.app_name) for key, h in bound.items()}


async def send(response: Any, retry_after_s: int) -> Any:
    """Await a deployment's answer; a full queue is the hosted 429 with Retry-After."""
    try:
        return await response
    except BackPressureError:
        raise too_many_requests(retry_after_s) from None
    except DeploymentUnavailableError as exc:
        raise ApiError(503, "ServiceUnavailable", f"the model is not available: {exc}") from None


class EncoderCalls:
    """The encoder deployments of the served versions, as the ingress calls them."""

    def __init__(self, cfg: Config, encoders: dict[str, DeploymentHandle]):
        self.encoders = own_handles(encoders)  # version -> DeploymentHandle of its EncoderDeployment
        self.retry_after_s = cfg.service.retry_after_s
        size, wait = batch_options(cfg)
        self.batching = size > 1
        for batched in (self._text_batch, self._image_batch):
            batched.set_max_batch_size(size)
            batched.set_batch_wait_timeout_s(wait)

    async def text(self, version: str, text: str) -> dict[str, Any]:
        """A validated text's unit vector: {"vector": float32 array, "json": its JSON text} (errors raised
        as ApiError)."""
        if self.batching:
            return unwrap(await self._text_batch(version, text))
        return unwrap((await send(self.encoders[version].texts.remote([text]), self.retry_after_s))[0])

    async def image(self, version: str, data: bytes) -> dict[str, Any]:
        """An image file's unit vector, as `text` gives it (an undecodable file: ApiError)."""
        if self.batching:
            return unwrap(await self._image_batch(version, data))
        return unwrap((await send(self.encoders[version].images.remote([data]), self.retry_after_s))[0])

    # __init__ sets the configured size and wait. Several batches may be in flight at once: one per
    # encoder replica that is free.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=BATCHES_IN_FLIGHT)
    async def _text_batch(self, versions: list[str], texts: list[str]) -> list[dict[str, Any]]:
        return await self._encode_batch("texts", versions, texts)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=BATCHES_IN_FLIGHT)
    async def _image_batch(self, versions: list[str], files: list[bytes]) -> list[dict[str, Any]]:
        return await self._encode_batch("images", versions, files)

    async def _encode_batch(self, method: str, versions: list[str], values: list[Any]) -> list[dict]:
        """One encoder call per model version in the batch; the replies in the requests' order. A call
        that fails (a full queue: 429) fails every request of its batch."""
        items: dict[str, list[int]] = {}
        for i, version in enumerate(versions):
            items.setdefault(version, []).append(i)
        replies: list[dict[str, Any]] = [{} for _ in values]

        async def encode(version: str, where: list[int]) -> None:
            call = getattr(self.encoders[version], method).remote([values[i] for i in where])
            for i, answer in zip(where, await send(call, self.retry_after_s), strict=True):
                replies[i] = answer

        await asyncio.gather(*(encode(version, where) for version, where in items.items()))
        return replies
