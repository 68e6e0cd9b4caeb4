"""The HTTP ingress (FastAPI on Ray Serve): the hosted API's routes, our search routes and the page.

    POST /computervision/retrieval:vectorizeImage   hosted: JSON {"url"} or the image's raw bytes
    POST /computervision/retrieval:vectorizeText    hosted: JSON {"text"}
    POST /retrieval:search                          ours: see embedding.service.search_request
    GET  /retrieval/models                          ours: served versions, their indexes, filters and ranges
    GET  /retrieval/duplicates                      ours: the groups `embedding duplicates` wrote (404 before)
    GET  /retrieval/thumbnails/{imageId}            ours: a JPEG of at most service.thumbnail_px
    GET  /retrieval/images/{imageId}                ours: the indexed image's original bytes
    GET  /healthz                                   liveness (no key needed)
    GET  /, /page/...                               the search page (no key needed; its calls need one)
    HEAD /healthz, /, /page/...                     as GET, without the body

The ingress parses and checks requests, fetches request URLs, and calls the encoder and search
deployments of the version asked for; the model and the index live in those. Every answer carries
`X-Content-Type-Options: nosniff` (wire.NoSniff).
"""

import asyncio
import io
import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from embedding.config import Config
from embedding.errors import EmbeddingError
from embedding.fetch.sources import fetch
from embedding.media.text import TextLimits, validate_text
from embedding.service.body import BodyLimits, json_object, read_body
from embedding.service.calls import Deadline, EncoderCalls, own_handles, send
from embedding.service.search_request import SearchRequest, frame_index_param, parse_search
from embedding.service.security import authorized, source_settings
from embedding.service.thumbnails import Thumbnails
from embedding.service.wire import (
    INVALID_ARGUMENT,
    ApiError,
    NoSniff,
    check_api_version,
    from_embedding_error,
    invalid,
    model_version,
    not_found,
    unauthorized,
    unwrap,
    vector_response,
)

log = logging.getLogger(__name__)

PAGE_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
# The page loads nothing from elsewhere: every script, style, image and call stays on this server.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

app = FastAPI(title="embedding serve", docs_url=None, redoc_url=None, openapi_url=None)
app.add_middleware(NoSniff)
_errors_metric: Any = None


def _count_error(error: ApiError) -> None:
    """Serve's Prometheus metrics get our errors by code (ray_embedding_service_errors_total)."""
    global _errors_metric
    if _errors_metric is None:
        from ray.serve import metrics

        # Serve's Counter says tag_keys: Tuple[str] (one key); it takes any number, as ray.util's does.
        _errors_metric = metrics.Counter(
            "embedding_service_errors",
            "requests answered with an error",
            tag_keys=("status", "code"),  # type: ignore[arg-type]
        )
    code = error.inner[0] if error.inner else error.code
    _errors_metric.inc(tags={"status": str(error.status), "code": code})


@app.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> Response:
    _count_error(error)
    return error.response()


@app.exception_handler(EmbeddingError)
async def _input_error(request: Request, error: EmbeddingError) -> Response:
    # Only the request's own input raises here (indexed rows' sources are caught where thumbnails and
    # originals read them): an InvalidManifestRow is a refused request URL, answered as InvalidImageUrl.
    return await _api_error(request, from_embedding_error(error, request_url=True))


@app.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> Response:
    # Unknown routes and methods get the hosted 404, as an unknown api-version does.
    if error.status_code in (404, 405):
        return await _api_error(request, not_found())
    return await _api_error(request, ApiError(error.status_code, str(error.status_code), str(error.detail)))


@app.exception_handler(Exception)
async def _unexpected(request: Request, error: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return await _api_error(request, ApiError(500, "InternalServerError", "the server failed to answer"))


def _is_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _page_files() -> dict[str, bytes]:
    folder = resources.files("embedding.service") / "page"
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.name.endswith(tuple(PAGE_TYPES))}


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        cfg_json: str,
        versions: dict[str, dict[str, Any]],
        default: str,
        key_digests: list[str],
        encoders: dict[str, DeploymentHandle],
        searchers: dict[str, DeploymentHandle],
    ):
        self.cfg = Config.model_validate_json(cfg_json)
        self.specs = versions  # version -> dim, languages, description (the registry's, from the driver)
        self.versions = list(versions)
        self.default = default
        self.digests = tuple(key_digests)
        self.encoders = EncoderCalls(self.cfg, encoders)
        self.searchers = own_handles(searchers)  # version -> DeploymentHandle of its SearchDeployment
        limits = self.cfg.limits
        self.body_limits = BodyLimits(limits.max_image_bytes)
        self.text_limits = TextLimits(limits.min_text_words, limits.max_text_words)
        self.thumbnails = Thumbnails(self.cfg)
        self.page = _page_files() if self.cfg.service.page else {}

    # -- helpers -------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if not authorized(request.headers, self.digests):
            raise unauthorized()

    def _deadline(self) -> Deadline:
        """The request's deadline, counted from now: call it once the request's body has arrived."""
        return Deadline.after(self.cfg.service.request_timeout_s, self.cfg.service.retry_after_s)

    async def _search_call(self, version: str, method: str, deadline: Deadline, *args: Any) -> Any:
        """The value of a call to the version's search deployment (its error raised as ApiError)."""
        handle = getattr(self.searchers[version], method)
        return unwrap(await send(lambda: handle.remote(*args), deadline, f"search-{version}"))

    async def _fetch(self, url: Any, deadline: Deadline) -> bytes:
        """An image named by a request: the request source policy (no local paths), the job's limits."""
        if not isinstance(url, str) or not url.strip():
            raise invalid(INVALID_ARGUMENT, "'url' must be a non-empty string")
        fetching = asyncio.to_thread(fetch, url.strip(), source_settings(self.cfg, "request"))
        try:  # the fetch keeps its own timeout (fetch.timeout_s); the request does not wait past its own
            data, _ = await asyncio.wait_for(fetching, deadline.remaining())
        except TimeoutError:
            raise deadline.missed("the image URL") from None
        return data

    async def _encode(self, version: str, kind: str, value: Any, deadline: Deadline) -> dict[str, Any]:
        """The unit vector of a text, an image's bytes or an image URL, from the version's encoder:
        {"vector": float32 array, "json": the hosted API's JSON array}."""
        if kind == "text":
            return await self.encoders.text(version, validate_text(value, self.text_limits), deadline)
        data = await self._fetch(value, deadline) if kind == "url" else value
        return await self.encoders.image(version, data, deadline)

    async def _record(
        self, version: str, image_id: str, deadline: Deadline, frame_index: int | None = None
    ) -> dict[str, Any]:
        return await self._search_call(version, "record", deadline, image_id, frame_index)

    # -- the hosted API ------------------------------------------------------------------------------

    @app.post("/computervision/retrieval:vectorizeImage")
    async def vectorize_image(self, request: Request) -> Response:
        self._authorize(request)
        check_api_version(request.query_params)
        version = model_version(request.query_params, self.versions, self.default)
        body = await read_body(request, self.body_limits)
        deadline = self._deadline()
        if _is_json(request):
            encoded = await self._encode(version, "url", json_object(body).get("url"), deadline)
        else:  # raw bytes: application/octet-stream, image/*, a specific image type, or no type at all
            encoded = await self._encode(version, "image", body, deadline)
        return vector_response(version, encoded["json"])

    @app.post("/computervision/retrieval:vectorizeText")
    async def vectorize_text(self, request: Request) -> Response:
        self._authorize(request)
        check_api_version(request.query_params)
        version = model_version(request.query_params, self.versions, self.default)
        payload = json_object(await read_body(request, self.body_limits))
        encoded = await self._encode(version, "text", payload.get("text"), self._deadline())
        return vector_response(version, encoded["json"])

    # -- our own routes ------------------------------------------------------------------------------

    @app.post("/retrieval:search")
    async def search(self, request: Request) -> Response:
        self._authorize(request)
        payload = json_object(await read_body(request, self.body_limits))
        query = parse_search(payload, dict(request.query_params), self.versions, self.default, self.cfg)
        return JSONResponse(await self._search(query, self._deadline()))

    async def _search(self, query: SearchRequest, deadline: Deadline) -> dict[str, Any]:
        version = query.index_version
        ask: dict[str, Any] = {
            "top": query.top,
            "skip": query.skip,
            "filter": query.filter,
            "dedup": query.dedup,
            "weight": query.weight,
            "text": query.value if query.kind == "text" else None,
        }
        if query.kind == "image_id":
            ask["image_id"], ask["frame_index"] = query.value, query.frame_index
        elif query.kind == "vector":
            ask["vector"], ask["vector_version"] = query.value, query.vector_version
        else:  # embedded with the index's own version, as `embedding search` does
            ask["vector"] = (await self._encode(version, query.kind, query.value, deadline))["vector"]
            ask["vector_version"] = version
        answer = await self._search_call(version, "search", deadline, ask)
        return {**answer, "skip": query.skip, "top": query.top}

    @app.get("/retrieval/models")
    async def models(self, request: Request) -> Response:
        self._authorize(request)
        deadline = self._deadline()
        infos = await asyncio.gather(
            *(send(self.searchers[v].info.remote, deadline, f"search-{v}") for v in self.versions)
        )
        limits = self.cfg.limits
        return JSONResponse(
            {
                "defaultVersion": self.default,
                "models": [{**info, **self.specs[info["modelVersion"]]} for info in infos],
                "limits": {
                    "minTextWords": limits.min_text_words,
                    "maxTextWords": limits.max_text_words,
                    "maxImageBytes": limits.max_image_bytes,
                    "maxTop": self.cfg.service.max_top,
                },
            }
        )

    @app.get("/retrieval/duplicates")
    async def duplicates(self, request: Request) -> Response:
        """The groups of exact and near copies `embedding duplicates CONFIG` wrote for a version (files
        only: no deployment is called); 404 until it has run. Members carry no uri: service.result_uri's
        ResultUris lives with the search deployment (the ingress importing it would lengthen the import
        chain past tests/test_layout.py's limit), and the page needs ids only."""
        from embedding.errors import ConfigError  # imported here: this route is the ingress's only use
        from embedding.index.duplicate_groups import duplicate_groups

        self._authorize(request)
        version = model_version(request.query_params, self.versions, self.default)
        try:
            groups = await asyncio.to_thread(duplicate_groups, self.cfg, version)
        except ConfigError as exc:
            message = str(exc)
            if "embedding duplicates" not in message:
                message += ": run `embedding duplicates CONFIG`"
            raise ApiError(404, "NotFound", message, ("DuplicatesNotFound", message)) from None
        answer = []
        for group in groups:
            found = group.to_dict()
            found["members"] = [{k: v for k, v in m.items() if k != "uri"} for m in found["members"]]
            answer.append(found)
        return JSONResponse({"modelVersion": version, "groups": answer})

    @app.get("/retrieval/thumbnails/{image_id:path}")
    async def thumbnail(self, image_id: str, request: Request) -> Response:
        """A JPEG of an indexed image; of a video, the frame `frameIndex` names (else its first one)."""
        self._authorize(request)
        version = model_version(request.query_params, self.versions, self.default)
        frame = frame_index_param(request.query_params.get("frameIndex"))
        record = await self._record(version, image_id, self._deadline(), frame)
        data, problem = await asyncio.to_thread(self.thumbnails.get, version, record)
        headers = {"Cache-Control": "private, max-age=3600"}
        if problem:
            headers = {"Cache-Control": "no-store", "X-Thumbnail-Placeholder": problem}
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/retrieval/images/{image_id:path}")
    async def original(self, image_id: str, request: Request) -> Response:
        self._authorize(request)
        version = model_version(request.query_params, self.versions, self.default)
        record = await self._record(version, image_id, self._deadline())
        try:
            data = await asyncio.to_thread(self.thumbnails.source, record)
        except EmbeddingError as exc:
            raise ApiError(404, "NotFound", exc.message, (exc.code.value, exc.message)) from None
        try:
            media = Image.MIME.get(Image.open(io.BytesIO(data)).format or "", "application/octet-stream")
        except Exception:  # the job indexed it, so it decoded once; serve it as bytes regardless
            media = "application/octet-stream"
        return Response(data, media_type=media)

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz(self) -> Response:
        return JSONResponse({"status": "ok", "modelVersions": self.versions})

    # -- the page ------------------------------------------------------------------------------------

    @app.api_route("/", methods=["GET", "HEAD"])
    async def index_page(self) -> Response:
        return self._page_file("index.html")

    @app.api_route("/page/{name}", methods=["GET", "HEAD"])
    async def page_file(self, name: str) -> Response:
        return self._page_file(name)

    def _page_file(self, name: str) -> Response:
        if name not in self.page:
            raise not_found()
        media = PAGE_TYPES[name[name.rfind(".") :]]
        return Response(self.page[name], media_type=media, headers={"Content-Security-Policy": PAGE_POLICY})
