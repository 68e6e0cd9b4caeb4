"""A checked job: the start-time checks of `embedding run` (model version and weights, manifest files, kind
and columns) and what the pipeline's stages need from them, resolved once in the driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from embedding.config import Config, ModelVersionSpec
from embedding.errors import ConfigError
from embedding.fetch.uripolicy import SourceSettings
from embedding.job.plan import Plan
from embedding.job.summary import package_versions
from embedding.media.resize import Preprocess
from embedding.media.text import TextLimits
from embedding.models.catalog import preprocess_for
from embedding.models.identity import check_width, identity_for
from embedding.models.registry import check_available
from embedding.stages.chain import EncoderSettings, StageSettings, load_stage_class
from embedding.stages.decode import media_settings
from embedding.stages.read import ReadSettings
from embedding.stages.write import WriteSettings
from embedding.store.manifest import Listing, ManifestFile, detect_kind, find_files
from embedding.store.partition import Partition
from embedding.store.schemas import OWN_COLUMNS, OutputSchemas, file_metadata


@dataclass
class Prepared:
    """A checked job: what to read, what it becomes, and where it goes."""

    cfg: Config
    spec: ModelVersionSpec
    kind: str
    files: list[ManifestFile]
    carried: list[pa.Field]
    prep: Preprocess
    identity: dict[str, Any]


def _carried_fields(cfg: Config, files: list[ManifestFile]) -> list[pa.Field]:
    explicit = "carry_columns" in cfg.input.model_fields_set
    fields = []
    for name in cfg.input.carry_columns:
        if name in OWN_COLUMNS:
            raise ConfigError(
                f"input.carry_columns: '{name}' is an output column of its own and cannot be carried"
            )
        types = {str(f.schema.field(name).type) for f in files if name in f.schema.names}
        if len(types) > 1:
            raise ConfigError(
                f"input.carry_columns: '{name}' has different types across manifest files: {types}"
            )
        present = [f.schema.field(name) for f in files if name in f.schema.names]
        if len(present) < len(files):
            if explicit:
                missing = next(f.uri for f in files if name not in f.schema.names)
                raise ConfigError(f"input.carry_columns: manifest {missing} has no column '{name}'")
            continue  # caption and tags are carried when present
        fields.append(present[0])
    return fields


def prepare(cfg: Config, listing: Listing | None = None) -> Prepared:
    """All start-time checks: model version and weights, manifest files and columns. Raises ConfigError."""
    spec = check_available(cfg.model.version, cfg.model)
    check_width(cfg.model.version, spec)
    files = find_files(cfg.input.manifest, cfg.input.storage_options, listing)
    kind = detect_kind(files, cfg.input.kind)
    prep = preprocess_for(spec).with_choices(cfg.preprocess)
    if cfg.inference.stage_class:
        load_stage_class(cfg.inference.stage_class)
    if cfg.preprocess.stage_function:
        load_stage_class(cfg.preprocess.stage_function, "preprocess.stage_function")
    return Prepared(cfg, spec, kind, files, _carried_fields(cfg, files), prep, identity_for(cfg))


def _metadata(job: Prepared, run_id: str) -> dict[str, str]:
    cfg, spec = job.cfg, job.spec
    return file_metadata(
        {
            "model_version": cfg.model.version,
            "architecture": spec.architecture,
            "weights": spec.weights or "",
            "weights_sha256": job.identity["weights_sha256"],
            "embedding_dim": spec.dim,
            "preprocess": job.prep.__dict__,
            "precision": cfg.inference.precision,
            "package_version": package_versions()["embedding"],
            "run_id": run_id,
            "kind": job.kind,
        }
    )


def stage_settings(
    job: Prepared, run_id: str, partition: Partition, plan: Plan, gpus: float
) -> StageSettings:
    """Each stage's settings for this run: from its own config sections and what the checks found."""
    cfg = job.cfg
    names = set().union(*(f.schema.names for f in job.files))
    read = ReadSettings(
        carried=[f.name for f in job.carried],
        has_uri="uri" in names,
        has_inline="image" in names,
        storage_options=cfg.input.storage_options,
        partition=partition,
        retry_errors=cfg.run.retry_errors,
        # The policy of what rows may name; the read stage narrows it for manifests not on local disk.
        source=SourceSettings.from_config(cfg),
    )
    schemas = OutputSchemas(
        job.kind, job.spec.dim, cfg.output.embedding_dtype, job.carried, _metadata(job, run_id)
    )
    limits = cfg.limits
    return StageSettings(
        read=read,
        decode=media_settings(cfg, job.prep) if job.kind == "image" else None,
        text_limits=TextLimits(limits.min_text_words, limits.max_text_words) if job.kind == "text" else None,
        write=WriteSettings(schemas, partition, cfg.output.compression),
        encoder=EncoderSettings.from_config(cfg, job.kind, gpus),
        units_per_call=max(1, cfg.inference.batch_size // max(u.stop - u.start for u in plan.todo.values())),
        decode_path=cfg.preprocess.stage_function,
    )
