"""Typed run configuration: one pydantic section per concern, unknown keys refused with their path.

Loading it from a YAML file with `--set key=value` overrides is embedding.config_file.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embedding.config_sinks import SinkConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RunConfig(Section):
    name: str = "embedding-run"
    # resume: skip committed units, retry transient errors; overwrite: replace the version's output
    # once the new run has committed everything.
    mode: Literal["resume", "overwrite"] = "resume"
    retry_errors: bool = False  # also retry permanent errors of committed units
    # One writer per output root and model version: a run's lease is taken over by another run only when
    # its heartbeat (every lease_timeout_s / 4) has stopped for this long (the run died).
    lease_timeout_s: float = Field(default=60.0, gt=0)
    # Where the stages run. "ray": Ray Data tasks and actors. "standalone": no Ray; the model in this
    # process, decoding in a pool of worker processes (starts in seconds; a row that crashes the model
    # process ends the run, where Ray would isolate it). "auto": standalone for a run on this machine (no
    # ray.address or RAY_ADDRESS) of at most standalone_max_rows rows, unless the output's last run died.
    executor: Literal["auto", "ray", "standalone"] = "auto"
    standalone_max_rows: int = Field(default=10_000, ge=0)


class RayConfig(Section):
    # None or "local": a new local Ray started by the job; "auto": the cluster this machine belongs to;
    # or a cluster's address. RAY_ADDRESS (set by `ray job submit`) wins over this key.
    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)  # local Ray only
    num_gpus: int | None = Field(default=None, ge=0)  # local Ray only
    object_store_memory_mb: int | None = Field(default=None, ge=64)  # local Ray only
    progress_bars: bool = True


class InputConfig(Section):
    manifest: list[str] = Field(default_factory=list)  # paths, URLs or globs
    kind: Literal["auto", "image", "text"] = "auto"
    carry_columns: list[str] = Field(default_factory=lambda: ["caption", "tags"])
    # Rows per commit unit (and per decode task). Unset: an eighth of each file, 16 to 1,024 rows, so that a
    # small file still keeps every CPU busy and a large one costs the driver little (manifest.unit_size).
    unit_rows: int | None = Field(default=None, ge=1)
    allowed_schemes: list[str] = Field(
        default_factory=lambda: ["file", "s3", "gs", "gcs", "http", "https", "inline"]
    )
    storage_options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per protocol, for fsspec
    # A manifest on an object store or HTTP is someone else's file: its rows may name object-store and
    # HTTP(S) URIs only, never local paths or file:// (see README, Security), unless this is true.
    allow_local_from_remote_manifest: bool = False

    @field_validator("manifest", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class FetchConfig(Section):
    timeout_s: float = Field(default=20.0, gt=0)
    retries: int = Field(default=2, ge=0)  # extra attempts for transient failures
    backoff_s: float = Field(default=0.5, ge=0)
    threads: int = Field(default=8, ge=1)  # concurrent fetches per decode task (I/O bound)
    # HTTP(S) never connects to loopback, private, link-local, multicast or reserved addresses; these
    # CIDR ranges (an intranet's, say) are opened. Object-store endpoints of storage_options are not
    # affected: the config is trusted, a manifest is not.
    allowed_networks: list[str] = Field(default_factory=list)
    max_redirects: int = Field(default=5, ge=0)  # HTTP redirects followed, each one checked again
    # A video over the image size limit is downloaded whole (into a private temporary file) within this.
    video_timeout_s: float = Field(default=600.0, gt=0)
    # Reads abandoned at their deadline that may still be running in one process (a stalled NFS mount, a
    # server that never answers); beyond this, new reads fail at once (FetchFailed) instead of piling up.
    max_stuck_reads: int = Field(default=64, ge=1)

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a network in CIDR notation (e.g. 10.0.0.0/8)") from exc
        return out


class ModelVersionSpec(Section):
    """A model version: which open_clip architecture, which weights, and what it produces."""

    architecture: str  # open_clip model name, or hf-hub:/local-dir: schema
    weights: str | None = None  # open_clip pretrained tag, or a local file path
    sha256: str | None = None  # of the weights file, verified at load when given
    dim: int = Field(default=1024, ge=1)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    quick_gelu: bool = False
    tokenizer: str | None = None  # Hugging Face tokenizer name, for hf text towers
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: Literal["bicubic", "bilinear"] | None = None
    resize_mode: Literal["shortest", "longest", "squash"] | None = None
    description: str = ""


class ModelConfig(Section):
    version: str = "demo"
    versions: dict[str, ModelVersionSpec] = Field(default_factory=dict)  # added by this config


class PreprocessConfig(Section):
    draft_gap: float = Field(default=2.0, ge=0)  # 0 disables reduced-scale JPEG decoding
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    num_cpus: float = Field(default=1.0, gt=0)  # per decode task (a task decodes one unit)
    concurrency: int | None = Field(default=None, ge=1)  # max parallel decode tasks (None: Ray decides)
    # "module:function" of a decode stage to run instead of the built-in one (images only; the signature of
    # embedding.stages.decode.decode_images: packed units and MediaSettings in, the units with pixels out),
    # e.g. benchmarks/standin.py's, which stands in for decoding; it must be importable on every node.
    stage_function: str | None = None


class InferenceConfig(Section):
    batch_size: int = Field(default=64, ge=1)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min_actors: int = Field(default=1, ge=1)
    max_actors: int = Field(default=1, ge=1)
    num_gpus_per_actor: float | None = Field(default=None, ge=0)  # None: 1 when the cluster has GPUs
    num_cpus_per_actor: float = Field(default=1.0, ge=0)
    torch_threads: int | None = Field(default=None, ge=1)  # CPU inference threads (None: all cores)
    # A crashed encoder actor is always replaced; the batch that crashed it is retried this many times,
    # then its rows are retried one by one, and a row that still crashes becomes a WorkerCrashed error.
    max_task_retries: int = Field(default=2, ge=0)
    # "module:Class" of an encoder stage to use instead of the built-in one (a subclass of it, say, that
    # adds post-processing: embedding.stages.encode's ImageEncodeStage or TextEncodeStage); it must be
    # importable on every node.
    stage_class: str | None = None

    @model_validator(mode="after")
    def _actors(self) -> InferenceConfig:
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) exceeds max_actors ({self.max_actors})")
        return self


class OutputConfig(Section):
    root: str = "out"
    embedding_dtype: Literal["float32", "float16"] = "float32"
    compression: str = "zstd"
    storage_options: dict[str, Any] = Field(default_factory=dict)


class LimitsConfig(Section):
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1)  # files must be under this
    min_image_side: int = Field(default=10, ge=0)  # sides must be greater than this
    max_image_side: int = Field(default=16_000, ge=1)  # and less than this
    min_text_words: int = Field(default=1, ge=0)
    max_text_words: int = Field(default=70, ge=1)
    # Videos are streamed, never held whole, so their byte limit is far above the image limit.
    max_video_bytes: int = Field(default=2 * 1024**3, ge=1)  # video files must be under this
    max_video_seconds: float = Field(default=3600.0, gt=0)  # and last at most this long


class VideoConfig(Section):
    """How frames are sampled from video rows (embedding/media/video.py) and grouped into search results."""

    # interval: one frame every frame_interval_s; keyframes: only the keyframes (decodes far less)
    sample: Literal["interval", "keyframes"] = "interval"
    frame_interval_s: float = Field(default=1.0, gt=0)
    # At most this many frames per video; a longer video's samples are spread over its whole duration.
    max_frames: int = Field(default=600, ge=1)
    decode_threads: int = Field(default=0, ge=0)  # FFmpeg decoding threads per video; 0: one per core
    # Search: frames of a video whose cosine is within this margin of the video's best frame match.
    segment_margin: float = Field(default=0.05, ge=0, le=2)
    # Search: matching frames at most this far apart join one segment (None: 1.5 x frame_interval_s).
    segment_gap_s: float | None = Field(default=None, gt=0)


# The formats the hosted API accepts (Pillow's names). Only these plugins ever see a manifest's bytes.
DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "ICO", "MPO")


class ImagesConfig(Section):
    formats: list[str] = Field(default_factory=lambda: list(DEFAULT_IMAGE_FORMATS))
    # Most pixels decoded for one image (the frame that is decoded, after JPEG's reduced-scale decoding).
    # 100 MP keeps one decode under about 1 GB (RGBA plus its RGB copy). Under the 20 MB file limit only
    # JPEGs and flat images (line-art scans, maps) get this large, and JPEGs are decoded at 1/2 to 1/8
    # scale, so a 15,999 x 15,999 JPEG still passes; a PNG or TIFF that size does not, unless this is
    # raised (to 256,000,000 to admit every image the side limits allow).
    max_pixels: int = Field(default=100_000_000, ge=1)

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        names = [str(v).upper() for v in value]
        unusual = [n for n in names if n not in DEFAULT_IMAGE_FORMATS]
        if unusual:
            from PIL import Image

            Image.init()
            unknown = [n for n in unusual if n not in Image.OPEN]
            if unknown:
                raise ValueError(f"Pillow cannot open {', '.join(unknown)}")
        return names


class IndexConfig(Section):
    enabled: bool = True
    kind: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"
    factory: str | None = None  # a FAISS factory string; overrides kind
    shards: int = Field(default=2, ge=1)
    memory_budget_mb: int = Field(default=4096, ge=1)  # for the index's in-RAM part
    exact_max_rows: int = Field(default=100_000, ge=1)  # up to this, exact search
    train_sample: int = Field(default=100_000, ge=1)
    # Candidates re-ranked exactly; 0 disables. On 1M clustered vectors (docs/benchmarks.md) recall@10 was
    # 0.88 with 200 and 0.997 with 500 at 208 queries/s on one thread; nprobe beyond 16 changed nothing.
    rerank: int = Field(default=500, ge=0)
    rerank_dtype: Literal["float16", "float32"] = "float16"
    nprobe: int = Field(default=16, ge=1)
    ef_search: int = Field(default=128, ge=1)
    self_check_queries: int = Field(default=200, ge=0)  # an update checks a quarter as many
    # Text queries of the version's text tower in the self-check of a compressed index (exact ones need
    # none): compressed kinds can fail text queries while image queries look fine.
    self_check_texts: int = Field(default=32, ge=0)
    # Changes of the committed units update the index in place (README, "Updating the index"):
    # retired and delta rows past this share of the live rows are compacted into full shards,
    compact_at: float = Field(default=0.25, gt=0)
    # a collection grown past this multiple of the rows its structure was trained on is rebuilt,
    retrain_growth: float = Field(default=4.0, gt=1)
    # and so is one whose self-check after an update falls under this recall@10.
    min_recall: float = Field(default=0.9, ge=0, le=1)
    # Fills of up to this many rows run in the index stage's own process, without Ray.
    local_rows: int = Field(default=100_000, ge=0)


class SearchConfig(Section):
    top: int = Field(default=10, ge=1)
    relevance_weight: float = Field(default=0.2, ge=0, le=1)  # share of the metadata score in relevance
    pool: int = Field(default=100, ge=1)  # cosine candidates that relevance re-orders (text queries)
    # Frames of a video come back as segments (a video id, the moments that match, the best frame's time);
    # off, every frame is a result of its own.
    group_videos: bool = True
    # Near-duplicates folded into the better result (`--dedup`, "dedup": true, the page's toggle): a result
    # whose stored vector has at least this cosine with a better one's is listed under it, not beside it.
    dedup: bool = False
    dedup_cosine: float = Field(default=0.95, ge=0, le=1)


class DuplicatesConfig(Section):
    """`embedding duplicates`: groups of exact (same content digest) and near (cosine) copies."""

    cosine: float = Field(default=0.97, ge=0, le=1)  # near copies: at least this cosine to a member
    neighbours: int = Field(default=10, ge=1, le=1000)  # nearest neighbours looked at per vector


class EncoderServiceConfig(Section):
    """The encoder deployment of each served model version (`embedding serve`)."""

    batching: bool = True  # false: every request is encoded alone (batch size 1)
    max_batch_size: int = Field(default=32, ge=1)  # requests merged into one model call
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)  # how long a batch waits to fill up
    # Replicas always running; with max_replicas above it, Serve autoscales between the two. Two survive the
    # death of one without losing a request (the ingress retries on the other); one costs the requests of
    # the replacement's start time a 503 (README, "When a replica dies").
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)
    # Calls to an encoder replica are batches (one request each with batching off): the autoscaling
    # target is calls in flight per replica, and the ingress keeps 4 per replica in flight.
    target_ongoing_requests: float = Field(default=2, gt=0)
    max_ongoing_requests: int = Field(default=64, ge=1)  # calls in flight per replica
    # Requests waiting beyond this get HTTP 429 with Retry-After (-1: no limit): with batching, those
    # waiting at an ingress replica for a batch; without, calls waiting for an encoder replica.
    max_queued_requests: int = Field(default=256, ge=-1)
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)  # None: inference.num_gpus_per_actor, or 1 with GPUs
    # CPU inference threads per replica; None: its num_cpus (at least 1). Not every core, as the batch job
    # does: a replica shares its node with Serve's proxy and other replicas, and threads beyond its share
    # of the cores spin against them.
    torch_threads: int | None = Field(default=None, ge=1)

    @field_validator("max_queued_requests")
    @classmethod
    def _queue(cls, value: int) -> int:
        if value == 0:  # Serve refuses it for the encoder's own queue
            raise ValueError("must be -1 (no limit) or at least 1")
        return value

    @model_validator(mode="after")
    def _replicas(self) -> EncoderServiceConfig:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        return self


class ServiceConfig(Section):
    """`embedding serve`: the hosted API's routes, search, thumbnails and the search page on Ray Serve."""

    host: str = "127.0.0.1"  # without API keys the service binds 127.0.0.1 whatever this says
    # What answers HTTP (embedding.service.app): "haproxy" is Ray Serve's high-throughput mode (HAProxy in
    # front of the ingress replicas, which serve HTTP themselves); "python" is Serve's Python proxy; "auto"
    # is haproxy where Ray's bundled HAProxy (or one on PATH) is found, else python.
    proxy: Literal["auto", "haproxy", "python"] = "auto"
    # HAProxy's `timeout http-request`: a client must send its request line and headers within this long,
    # or HAProxy answers 408 and closes the connection (a client that trickles headers holds a connection).
    http_request_timeout_s: float = Field(default=10.0, gt=0)
    port: int = Field(default=8000, ge=1, le=65535)
    versions: list[str] = Field(default_factory=list)  # served model versions; empty: [model.version]
    default_version: str | None = None  # `latest` or no model-version; None: model.version
    api_keys: list[str] = Field(default_factory=list)  # also EMBEDDING_API_KEYS (comma-separated)
    # A file of API keys, one a line (a mounted Kubernetes Secret): read where the application is built,
    # so that keys reach no process's environment; a file that is missing or holds no key is an error.
    api_keys_file: str | None = None
    retry_after_s: int = Field(default=1, ge=0)  # the Retry-After of a 429 or a 503
    # No request is answered later than this after its body arrived: a call whose replica died is retried
    # once within it, and one that cannot finish in time is answered 503 with Retry-After.
    request_timeout_s: float = Field(default=10.0, gt=0)
    max_top: int = Field(default=1000, ge=1)  # the most results one search request may ask for
    encoder: EncoderServiceConfig = Field(default_factory=EncoderServiceConfig)
    search_replicas: int = Field(default=1, ge=1)
    index_poll_s: float = Field(default=2.0, gt=0)  # how often a search replica looks for a rebuilt index
    thumbnail_px: int = Field(default=256, ge=16, le=1024)  # longest side of a thumbnail
    thumbnail_cache_mb: int = Field(default=256, ge=1)  # under <output.root>/_cache/thumbnails
    page: bool = True  # the search page at /
    # The `uri` of a search result over HTTP (`embedding search` prints it whole: its user is trusted).
    # "relative" (default): relative to the folder of the config's manifest file that is its prefix, else
    # the file name alone, so that no client learns the server's folders, buckets, hosts or URL query
    # strings (signatures); "manifest": the uri as the index holds it (the job resolved a manifest's
    # relative paths against its folder, so a local file's is its absolute path); "none": null.
    result_uri: Literal["relative", "manifest", "none"] = "relative"


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    duplicates: DuplicatesConfig = Field(default_factory=DuplicatesConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    # Where committed vectors are delivered besides the Parquet tables (embedding.sinks): none by default.
    sinks: list[SinkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sink_names(self) -> Config:
        names = [sink.name for sink in self.sinks]
        if len(names) != len(set(names)):
            raise ValueError(f"sinks: each needs a name of its own (have {', '.join(names)})")
        return self

    def to_yaml(self, redacted: bool = True) -> str:
        """The config as YAML; secrets redacted (what runs/<id>/config.yaml keeps) unless asked otherwise.

        The redacted form loads again but cannot reach storage: ship the config to workers as an object
        (or `model_dump_json`), never through this text.
        """
        from embedding.redact import redact_config

        tree = self.model_dump(mode="json")
        return yaml.safe_dump(redact_config(tree) if redacted else tree, sort_keys=False, allow_unicode=True)
