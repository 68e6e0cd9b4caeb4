"""How the ingress calls the other deployments: their handles, deadlines, retries, errors, and batching.

Every call runs under its request's deadline (`service.request_timeout_s` from the end of the request's
body). A call whose replica died under it (the actor is gone, or its gRPC channel broke) is sent once
more: Serve routes it to another replica, or holds it until the replacement is up. The deployments'
methods are idempotent (a vector, a search), so a second try never does a thing twice. What cannot be
answered in time is a 503 with Retry-After, never a hang and never a 500.

Requests that arrive together travel to a version's encoder as one call, formed here by Serve's batching
(`serve.batch`; `service.encoder.max_batch_size` and `batch_wait_timeout_s`), and run there as one model call
(embedding.service.encoders). With `service.encoder.batching: false` every request is a call of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from embedding.config import Config
from embedding.service.wire import ApiError, too_many_requests, unavailable, unwrap

log = logging.getLogger(__name__)

BATCHES_PER_REPLICA = 4  # batches in flight per encoder replica and route: one runs, the next ones decode
# gRPC codes of a call between deployments (Serve's high-throughput mode) whose replica went away under it:
# the connection broke, the server shut down, or it died mid-answer. Serve itself retries a call that no
# replica had accepted yet; these are the ones it hands back.
_LOST_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered by (time.monotonic()), and what its 503 says."""

    at: float
    retry_after_s: int

    @classmethod
    def after(cls, seconds: float, retry_after_s: int) -> Deadline:
        return cls(time.monotonic() + seconds, retry_after_s)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def missed(self, what: str) -> ApiError:
        return unavailable(self.retry_after_s, f"{what} did not answer in time; try again")


def batch_options(cfg: Config) -> tuple[int, float]:
    """(max batch size, wait in seconds) of the encoder deployment; batching off is (1, 0)."""
    svc = cfg.service.encoder
    return (svc.max_batch_size, svc.batch_wait_timeout_s) if svc.batching else (1, 0.0)


def own_handles(bound: dict[str, DeploymentHandle]) -> dict[str, DeploymentHandle]:
    """The same deployments' handles, made in this process: a handle takes its transport (gRPC in Serve's
    high-throughput mode, else Ray actor calls) from the environment of the process that made it, and
    the bound ones were made by the process that built the application."""
    return {key: serve.get_deployment_handle(h.deployment_name, h.app_name) for key, h in bound.items()}


def replica_lost(error: BaseException) -> bool:
    """Whether a call failed because its replica died or went away (not because of what it was asked)."""
    if isinstance(error, RayTaskError):
        error = error.cause if isinstance(error.cause, BaseException) else error
    if isinstance(error, RayActorError):  # ActorDiedError, ActorUnavailableError
        return True
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in _LOST_CODES


async def _answer(response: Any) -> Any:
    return await response


async def send(call: Callable[[], Any], deadline: Deadline, what: str) -> Any:
    """A deployment's answer to `call()` (which sends the call and returns Serve's response), before the
    deadline. A full queue is the hosted 429 with Retry-After; a replica that died under the call: the
    call is sent once more; no replica, or no answer in time: 503 with Retry-After."""
    for attempt in (1, 2):
        try:
            return await asyncio.wait_for(_answer(call()), deadline.remaining())
        except BackPressureError:
            raise too_many_requests(deadline.retry_after_s) from None
        except DeploymentUnavailableError as exc:
            raise unavailable(deadline.retry_after_s, f"{what} is not available: {exc}") from None
        except TimeoutError:
            raise deadline.missed(what) from None
        except Exception as exc:
            if not replica_lost(exc):
                raise
            if attempt == 2:
                raise unavailable(deadline.retry_after_s, f"{what} is restarting; try again") from None
            log.warning("a replica of %s went away during a call (%s); sending it once more", what, exc)
    raise AssertionError("unreachable")


class EncoderCalls:
    """The encoder deployments of the served versions, as the ingress calls them (one per ingress replica).

    With batching, requests wait here for a batch: those beyond what the batches in flight hold plus
    `service.encoder.max_queued_requests` get the hosted 429, as an encoder's full queue does without it.
    """

    def __init__(self, cfg: Config, encoders: dict[str, DeploymentHandle]):
        self.encoders = own_handles(encoders)  # version -> DeploymentHandle of its EncoderDeployment
        svc = cfg.service.encoder
        self.retry_after_s = cfg.service.retry_after_s
        self.timeout_s = cfg.service.request_timeout_s
        size, wait = batch_options(cfg)
        self.batching = size > 1
        in_flight = BATCHES_PER_REPLICA * (svc.max_replicas or svc.min_replicas)
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

    async def text(self, version: str, text: str, deadline: Deadline) -> dict[str, Any]:
        """A validated text's unit vector: {"vector": float32 array, "json": its JSON text} (errors raised
        as ApiError)."""
        return await self._encode("texts", version, text, deadline)

    async def image(self, version: str, data: bytes, deadline: Deadline) -> dict[str, Any]:
        """An image file's unit vector, as `text` gives it (an undecodable file: ApiError)."""
        return await self._encode("images", version, data, deadline)

    async def _encode(self, method: str, version: str, value: Any, deadline: Deadline) -> dict[str, Any]:
        if not self.batching:
            handle = getattr(self.encoders[version], method)
            return unwrap((await send(lambda: handle.remote([value]), deadline, f"encoder-{version}"))[0])
        if self.most is not None and self.waiting[method] >= self.most:
            raise too_many_requests(self.retry_after_s)
        self.waiting[method] += 1
        try:
            # The batch runs on under a deadline of its own (its requests' latest); this request's ends here.
            answer = await asyncio.wait_for(self._batchers[method](version, value), deadline.remaining())
        except TimeoutError:
            raise deadline.missed(f"encoder-{version}") from None
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
        # Every request of the batch finished its body before the batch formed: none waits past this.
        deadline = Deadline.after(self.timeout_s, self.retry_after_s)
        items: dict[str, list[int]] = {}
        for i, version in enumerate(versions):
            items.setdefault(version, []).append(i)
        replies: list[Any] = [{} for _ in values]  # a reply, or the ApiError of a refused call

        async def encode(version: str, where: list[int]) -> None:
            handle = getattr(self.encoders[version], method)
            batch = [values[i] for i in where]
            try:
                answers = await send(lambda: handle.remote(batch), deadline, f"encoder-{version}")
            except ApiError as exc:  # raised to each caller as it is (a 429 keeps its Retry-After)
                answers = [exc] * len(where)
            for i, answer in zip(where, answers, strict=True):
                replies[i] = answer

        await asyncio.gather(*(encode(version, where) for version, where in items.items()))
        return replies
