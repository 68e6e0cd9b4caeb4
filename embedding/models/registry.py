"""Model versions: the built-in ones (README.md lists them), those a config adds, and where their weights are.

Nothing here touches the network: availability is decided from local files and the Hugging Face cache,
so a version whose weights are missing fails at once with a message that says what to download.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedding.config import ModelConfig, ModelVersionSpec
from embedding.errors import ConfigError
from embedding.models.catalog import CONFIG_DIR, is_weights_file, pretrained_cfg, pretrained_tags

DEMO_WEIGHTS = Path(__file__).resolve().parent.parent / "demo" / "weights" / "demo.safetensors"
DEMO_ARCHITECTURE = "embedding-demo"

_MULTILINGUAL = ["multilingual (XLM-R: about 100 languages)"]

BUILTIN_VERSIONS: dict[str, ModelVersionSpec] = {
    "2023-04-15": ModelVersionSpec(
        architecture="xlm-roberta-large-ViT-H-14",
        weights="frozen_laion5b_s13b_b90k",
        tokenizer="xlm-roberta-large",
        dim=1024,
        languages=_MULTILINGUAL,
        description="ViT-H/14 with a frozen multilingual XLM-RoBERTa-large text tower (LAION-5B)",
    ),
    "2022-04-11": ModelVersionSpec(
        architecture="ViT-H-14",
        weights="laion2b_s32b_b79k",
        dim=1024,
        languages=["en"],
        description="ViT-H/14 trained on LAION-2B, English text",
    ),
    "rn50-openai": ModelVersionSpec(
        architecture="RN50",
        weights="openai",
        quick_gelu=True,
        dim=1024,
        languages=["en"],
        description="OpenAI's ResNet-50 CLIP, small enough for a laptop CPU",
    ),
    "demo": ModelVersionSpec(
        architecture=DEMO_ARCHITECTURE,
        weights=str(DEMO_WEIGHTS),
        dim=1024,
        languages=["en", "fr", "es", "de"],
        description="small CLIP trained by this project on synthetic shapes (embedding/demo/weights)",
    ),
}

_registered = False


def register_architectures() -> None:
    """Make the project's own architectures (embedding-demo) known to open_clip; idempotent."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def all_versions(config: ModelConfig | None = None) -> dict[str, ModelVersionSpec]:
    """Built-in versions, then those the config adds (a config may also redefine a built-in)."""
    versions = dict(BUILTIN_VERSIONS)
    if config is not None:
        versions.update(config.versions)
    return versions


def get_version(name: str, config: ModelConfig | None = None) -> ModelVersionSpec:
    versions = all_versions(config)
    if name not in versions:
        raise ConfigError(f"unknown model version '{name}'; known versions: {', '.join(versions)}")
    return versions[name]


@dataclass(frozen=True)
class WeightsLocation:
    """Where a version's files are, or why they are not here."""

    path: str | None  # the local weights file, when available (None: not needed or missing)
    available: bool
    problem: str = ""  # what is missing and how to provide it


def _hf_cached(repo_id: str, filenames: list[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.exists(found):
            return found
    return None


def _tokenizer_problem(name: str, spec: ModelVersionSpec) -> str:
    if not spec.tokenizer:
        return ""
    if os.path.isdir(spec.tokenizer):
        return ""
    files = ["tokenizer.json", "sentencepiece.bpe.model", "tokenizer_config.json"]
    if _hf_cached(spec.tokenizer, files) and _hf_cached(spec.tokenizer, ["config.json"]):
        return ""
    return (
        f"the tokenizer and text config '{spec.tokenizer}' are not in the Hugging Face cache; run "
        f"`huggingface-cli download {spec.tokenizer} config.json tokenizer.json sentencepiece.bpe.model` "
        f"on a machine with access (cache: {os.environ.get('HF_HOME', '~/.cache/huggingface')})"
    )


def locate_weights(name: str, spec: ModelVersionSpec) -> WeightsLocation:
    """Find a version's weights on this machine without any download."""
    tokenizer_problem = _tokenizer_problem(name, spec)
    weights = spec.weights
    if weights is None:
        return WeightsLocation(None, not tokenizer_problem, tokenizer_problem)
    if is_weights_file(weights):
        if not os.path.isfile(weights):
            problem = (
                f"model version '{name}' needs the weights file {weights}, which does not exist; "
                f"put the file there or set model.versions.{name}.weights to its path"
            )
            return WeightsLocation(None, False, problem)
        return WeightsLocation(weights, not tokenizer_problem, tokenizer_problem)
    arch = spec.architecture
    cfg = pretrained_cfg(arch, weights)
    if not cfg:
        tags = pretrained_tags(arch)
        problem = (
            f"model version '{name}': '{weights}' is neither a file nor a pretrained tag of open_clip "
            f"model {arch} (tags: {', '.join(tags) or 'none'})"
        )
        return WeightsLocation(None, False, problem)
    repo, filename = _split_hub(cfg.get("hf_hub", ""))
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    found = _hf_cached(repo, candidates) if repo else None
    if found is None:
        download = f"huggingface-cli download {repo} {candidates[0]}" if repo else f"curl -O {cfg.get('url')}"
        problem = (
            f"model version '{name}' needs open_clip weights {arch}/{weights}, which are not on this "
            f"machine. Download them where a model hub is reachable (`{download}`) into the Hugging Face "
            f"cache, or set model.versions.{name}.weights to a local file"
        )
        if tokenizer_problem:
            problem += "; also " + tokenizer_problem
        return WeightsLocation(None, False, problem)
    return WeightsLocation(found, not tokenizer_problem, tokenizer_problem)


def describe_versions(config: ModelConfig | None = None) -> list[dict[str, Any]]:
    """Every known version (built-in and the config's) with where its weights stand: `embedding models`."""
    rows = []
    for name, spec in all_versions(config).items():
        location = locate_weights(name, spec)
        rows.append(
            {
                "version": name,
                "architecture": spec.architecture,
                "weights": spec.weights,
                "dim": spec.dim,
                "languages": spec.languages,
                "available": location.available,
                "problem": location.problem,
            }
        )
    return rows


class WeightsUnavailable(ConfigError):
    """A version's weights or tokenizer files are not on this machine."""


def check_available(name: str, config: ModelConfig | None = None) -> ModelVersionSpec:
    """Raise WeightsUnavailable (one clear sentence) unless the version can be loaded here."""
    spec = get_version(name, config)
    location = locate_weights(name, spec)
    if not location.available:
        raise WeightsUnavailable(location.problem)
    return spec


def expected_sha256(spec: ModelVersionSpec, weights_path: str | None) -> str | None:
    """The checksum a version's weights must have: from the spec, or from the `.json` shipped beside them."""
    if spec.sha256:
        return spec.sha256.lower()
    if weights_path:
        sidecar = Path(weights_path).with_suffix(".json")
        if sidecar.is_file():
            return json.loads(sidecar.read_text()).get("sha256")
    return None


def _split_hub(hub: str) -> tuple[str, str]:
    """open_clip's "org/name/" or "org/name/file" -> (repo id, file name or "")."""
    parts = [p for p in hub.split("/") if p]
    return "/".join(parts[:2]), "/".join(parts[2:])
