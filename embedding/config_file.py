"""Loading a config: the YAML file, `--set key=value` overrides, relative paths and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from embedding.config import Config
from embedding.errors import ConfigError


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """ "section.key=value" -> (path, value); the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _relative_to(base: Path, tree: dict[str, Any]) -> None:
    """Resolve relative local paths of input.manifest and output.root against the config file's folder."""

    def fix(path: str) -> str:
        return path if "://" in path or os.path.isabs(path) else str((base / path).resolve())

    inp, out = tree.get("input"), tree.get("output")
    if isinstance(inp, dict) and "manifest" in inp:
        manifests = inp["manifest"]
        inp["manifest"] = fix(manifests) if isinstance(manifests, str) else [fix(m) for m in manifests or []]
    if isinstance(out, dict) and isinstance(out.get("root"), str):
        out["root"] = fix(out["root"])


def describe_errors(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{path}'")
        else:
            parts.append(f"'{path}': {item['msg']}")
    return f"invalid config {source}: " + "; ".join(parts)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config and apply `--set` overrides; raises ConfigError with a one-line message.

    Relative paths in the file are relative to the file's folder; relative paths given with --set are
    relative to the current directory.
    """
    tree: dict[str, Any] = {}
    source = "(defaults)"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded or {}
        _relative_to(Path(path).resolve().parent, tree)
    cwd_tree: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        _set_path(cwd_tree, key, value)
    _relative_to(Path.cwd(), cwd_tree)
    _merge(tree, cwd_tree)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
