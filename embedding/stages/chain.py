"""The stages of a run, whichever executor runs them (Ray Data in embedding.job.ray_executor, or
embedding.job.standalone): their settings, resolved once in the driver; the decode (or text check) function;
and the encoder stage, named by its class path and imported where the model runs, so that a driver on Ray
never imports torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.media.load import MediaSettings
from embedding.media.text import TextLimits
from embedding.stages.decode import check_texts, decode_images
from embedding.stages.read import ReadSettings
from embedding.stages.write import WriteSettings


@dataclass(frozen=True)
class StageSettings:
    """Everything the stages need, resolved once in the driver."""

    kind: str
    version: str
    read: ReadSettings
    decode: MediaSettings | None  # images
    text_limits: TextLimits | None  # texts
    write: WriteSettings
    num_gpus_per_actor: float
    units_per_call: int = 1  # whole units per encoder call: as many as fill a model batch


def load_stage_class(path: str) -> type:
    """Import "module:Class"; raises ConfigError when it cannot be found."""
    import importlib

    module_name, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"inference.stage_class: cannot import {path!r}: {exc}") from exc


def stage_functions(cfg: Config, settings: StageSettings) -> tuple[Callable, dict[str, Any], str]:
    """The decode (or text check) function with its keyword arguments, and the encoder stage's class path
    (imported where the model runs: the driver of a Ray run never imports torch)."""
    if settings.kind == "image":
        prepare, kwargs, stage = (
            decode_images,
            {"settings": settings.decode},
            "embedding.stages.encode:ImageEncodeStage",
        )
    else:
        prepare, kwargs, stage = (
            check_texts,
            {"limits": settings.text_limits},
            "embedding.stages.encode:TextEncodeStage",
        )
    return prepare, kwargs, cfg.inference.stage_class or stage


def make_stage(path: str, settings: StageSettings, cfg: Config) -> Any:
    """The encoder stage of a class path, with its model loaded."""
    return load_stage_class(path)(version=settings.version, model_cfg=cfg.model, inference=cfg.inference)


class EncodeActor:
    """Ray Data's actor class for the encoder: it imports and builds the stage in the actor's process."""

    def __init__(self, path: str, settings: StageSettings, cfg: Config):
        self.stage = make_stage(path, settings, cfg)

    def __call__(self, batch: Any) -> Any:
        return self.stage(batch)
