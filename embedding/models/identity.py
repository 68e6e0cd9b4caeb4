"""The identity of a model version's vector space: what must not change for vectors to be comparable.

A partition records it at its first commit (`identity.json` in its state folder) and the index records it
too. A run whose model differs in any field (architecture, weights checksum, preprocessing, precision,
width) stops at start with a ConfigError naming both values, unless it overwrites the partition; the index
build refuses a partition of another identity than the one it indexes, and search refuses an index built
by another model than the one that embeds its queries (precision aside: see `SEARCH_FIELDS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from embedding.config import Config, ModelVersionSpec
from embedding.errors import ConfigError
from embedding.media.resize import Preprocess

FIELDS = ("architecture", "weights_sha256", "preprocess", "precision", "dim")
# A query embedded in fp32 on a laptop CPU against vectors made in fp16 on a GPU is the common case, and
# precision moves vectors by far less than retrieval notices (docs/benchmarks.md: cosine >= 0.999);
# everything else changes the space.
SEARCH_FIELDS = ("architecture", "weights_sha256", "preprocess", "dim")


# The model's own preprocessing; the job's decoding choices (draft_gap, alpha_background) are not part of
# the space: they move a vector by less than the parity the project holds them to (cosine >= 0.995).
PREPROCESS_FIELDS = ("size", "interpolation", "resize_mode", "mean", "std")


def model_identity(
    spec: ModelVersionSpec, prep: Preprocess, precision: str, weights_sha256: str | None
) -> dict[str, Any]:
    values = dataclasses.asdict(prep)
    preprocess = {
        k: list(values[k]) if isinstance(values[k], tuple) else values[k] for k in PREPROCESS_FIELDS
    }
    return {
        "architecture": spec.architecture,
        "weights_sha256": weights_sha256 or f"pretrained:{spec.weights}",
        "preprocess": preprocess,
        "precision": precision,
        "dim": spec.dim,
    }


def check_same(
    recorded: dict[str, Any] | None, current: dict[str, Any], where: str, fields: tuple[str, ...] = FIELDS
) -> None:
    """Raise ConfigError naming every field whose value differs from the recorded identity."""
    if not recorded:
        return
    differs = [f for f in fields if f in recorded and recorded[f] != current.get(f)]
    if differs:
        details = "; ".join(f"{f}: {recorded[f]!r} there, {current.get(f)!r} now" for f in differs)
        raise ConfigError(
            f"{where} holds vectors of another model under the same version name ({details}); vectors of two "
            "models never share a partition or an index: use another model.version name, or --mode overwrite"
        )


def check_width(name: str, spec: ModelVersionSpec) -> None:
    """Refuse a version whose declared `dim` is not what its architecture outputs (checked at start)."""
    from embedding.models.catalog import model_config

    width = (model_config(spec.architecture) or {}).get("embed_dim")
    if width is not None and width != spec.dim:
        raise ConfigError(
            f"model version '{name}': dim is {spec.dim} but architecture {spec.architecture} outputs vectors "
            f"of {width} dimensions; set dim: {width}"
        )


def identity_for(cfg: Config) -> dict[str, Any]:
    """The identity of the configured model version (its weights are checked to be on this machine)."""
    from embedding.models.catalog import preprocess_for
    from embedding.models.registry import check_available, expected_sha256, locate_weights
    from embedding.store.cache import file_sha256

    version = cfg.model.version
    spec = check_available(version, cfg.model)
    location = locate_weights(version, spec)
    sha = expected_sha256(spec, location.path) or (file_sha256(location.path) if location.path else None)
    precision = cfg.inference.precision
    if cfg.inference.device == "cpu" and precision == "fp16":
        precision = "fp32"  # what the encoder loads on a CPU (models.loading)
    return model_identity(spec, preprocess_for(spec), precision, sha)
