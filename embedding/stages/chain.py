"""The stages of a run, whichever executor runs them (Ray Data in embedding.job.ray_executor, or
embedding.job.standalone): each stage's own settings object, built once in the driver from its config
sections (embedding.job.checks), and the encoder stage, named by its class path and imported where the model
runs, so that a driver on Ray never imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedding.config import Config, InferenceConfig, ModelConfig
from embedding.errors import ConfigError
from embedding.media.load import MediaSettings
from embedding.media.text import TextLimits
from embedding.stages.read import ReadSettings
from embedding.stages.write import WriteSettings

DEFAULT_STAGES = {
    "image": "embedding.stages.encode:ImageEncodeStage",
    "text": "embedding.stages.encode:TextEncodeStage",
}


def load_stage_class(path: str, key: str = "inference.stage_class") -> Any:
    """Import "module:Name" (the class of `inference.stage_class`, the function of
    `preprocess.stage_function`); raises ConfigError, naming the config key, when it cannot be found."""
    import importlib

    module_name, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot import {path!r}: {exc}") from exc


@dataclass(frozen=True)
class EncoderSettings:
    """The encoder stage: its class (`inference.stage_class`, else the built-in one of the kind) and the
    config sections it reads (model, inference)."""

    path: str  # "module:Class"
    version: str
    model: ModelConfig
    inference: InferenceConfig
    num_gpus: float  # per actor, on Ray

    @classmethod
    def from_config(cls, cfg: Config, kind: str, num_gpus: float = 0.0) -> EncoderSettings:
        path = cfg.inference.stage_class or DEFAULT_STAGES[kind]
        return cls(path, cfg.model.version, cfg.model, cfg.inference, num_gpus)

    def make(self) -> Any:
        """The encoder stage, with its model loaded."""
        return load_stage_class(self.path)(
            version=self.version, model_cfg=self.model, inference=self.inference
        )


@dataclass(frozen=True)
class StageSettings:
    """Each stage's settings, resolved once in the driver."""

    read: ReadSettings
    decode: MediaSettings | None  # images
    text_limits: TextLimits | None  # texts
    write: WriteSettings
    encoder: EncoderSettings
    units_per_call: int = 1  # whole units per encoder call: as many as fill a model batch
    decode_path: str | None = None  # preprocess.stage_function: "module:function" decoding images instead

    def decode_function(self) -> Any:
        """The decode function of preprocess.stage_function, imported here; None: the built-in one."""
        return load_stage_class(self.decode_path, "preprocess.stage_function") if self.decode_path else None

    @property
    def kind(self) -> str:
        return self.write.partition.kind


class EncodeActor:
    """Ray Data's actor class for the encoder: it imports and builds the stage in the actor's process."""

    def __init__(self, settings: EncoderSettings):
        self.stage = settings.make()

    def __call__(self, batch: Any) -> Any:
        return self.stage(batch)
