"""How the ingress calls the other deployments: their handles, the errors of a call, and batching.

Requests that arrive together travel to a version's encoder as one call, formed here by Serve's batching
(`serve.batch`; `service.encoder.max_batch_size` and `batch_wait_timeout_s`), and run there as one model call
(embedding.service.encoders). With `service.encoder.batching: false` every request is a call of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from embedding.config import Config
from embedding.service.wire import ApiError, too_many_requests, unwrap

BATCHES_PER_REPLICA = 4  # batches in flight per encoder replica and route: one runs, the next ones decode


def batch_options(cfg: Config) -> tuple[int, float]:
    """(max batch size, wait in seconds) of the encoder deployment; batching off is (1, 0)."""
    svc = cfg.service.encoder
    return (svc.max_batch_size, svc.batch_wait_timeout_s) if svc.batching else (1, 0.0)


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
    """The encoder deployments of the served versions, as the ingress calls them (one per ingress replica).

    With batching, requests wait here for a batch: those beyond what the batches in flight hold plus
    `service.encoder.max_queued_requests` get the hosted 429, as an encoder's full queue does without it.
    """

    def __init__(self, cfg: Config, encoders: dict[str, DeploymentHandle]):
        self.encoders = own_handles(encoders)  # version -> DeploymentHandle of its EncoderDeployment
        svc = cfg.service.encoder
        self.retry_after_s = cfg.service.retry_after_s
        size, wait = batch_options(cfg)
        self.batching = size > 1
        in_flight = BATCHES_PER_REPLICA * (svc.max_replicas or svc.replicas)
        # Requests one route may hold here before the next get 429 (None: no limit).
        self.most = None if svc.max_queued_requests < 0 else in_flight * size + svc.max_queued_requests
        self.waiting = {"texts": 0, "images": 0}
        # Batchers of this object (Serve's decorator would share one queue, and one setting, per class).
        batch = serve.batch(max_batch_size=size, batch_wait_timeout_s=wait, max_concurrent_batches=in_flight)
        # Each takes (version, value): Serve batches every argument of a call into its own list.
        self._batchers: dict[str, Callable[..., Awaitable[Any]]] = {
            "texts": batch(self._text_batch),
            "images": batch(self._image_batch),
        }

    async def text(self, version: str, text: str) -> dict[str, Any]:
        """A validated text's unit vector: {"vector": float32 array, "json": its JSON text} (errors raised
        as ApiError)."""
        return await self._encode("texts", version, text)

    async def image(self, version: str, data: bytes) -> dict[str, Any]:
        """An image file's unit vector, as `text` gives it (an undecodable file: ApiError)."""
        return await self._encode("images", version, data)

    async def _encode(self, method: str, version: str, value: Any) -> dict[str, Any]:
        if not self.batching:
            return unwrap(
                (await send(getattr(self.encoders[version], method).remote([value]), self.retry_after_s))[0]
            )
        if self.most is not None and self.waiting[method] >= self.most:
            raise too_many_requests(self.retry_after_s)
        self.waiting[method] += 1
        try:
            answer = await self._batchers[method](version, value)
        finally:
            self.waiting[method] -= 1
        if isinstance(answer, ApiError):
            raise answer
        return unwrap(answer)

    async def _text_batch(self, versions: list[str], texts: list[str]) -> list[Any]:
        return await self._encode_batch("texts", versions, texts)

    async def _image_batch(self, versions: list[str], files: list[bytes]) -> list[Any]:
        return await self._encode_batch("images", versions, files)

    async def _encode_batch(self, method: str, versions: list[str], values: list[Any]) -> list[Any]:
        """One encoder call per model version in the batch; the replies in the requests' order. A call
        that is refused (a full queue, no replica) fails the requests of its version only."""
        items: dict[str, list[int]] = {}
        for i, version in enumerate(versions):
            items.setdefault(version, []).append(i)
        replies: list[Any] = [{} for _ in values]  # a reply, or the ApiError of a refused call

        async def encode(version: str, where: list[int]) -> None:
            call = getattr(self.encoders[version], method).remote([values[i] for i in where])
            try:
                answers = await send(call, self.retry_after_s)
            except ApiError as exc:  # raised to each caller as it is (a 429 keeps its Retry-After)
                answers = [exc] * len(where)
            for i, answer in zip(where, answers, strict=True):
                replies[i] = answer

        await asyncio.gather(*(encode(version, where) for version, where in items.items()))
        return replies
