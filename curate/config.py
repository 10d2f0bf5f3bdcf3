"""Typed YAML configs: loading, `key=value` overrides and validation errors that name the
file and the key path. Pipelines and trainer configs both use these."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config file (or override) is not valid; the message says where and why."""


def load_yaml(path: str | Path, overrides: list[str] = ()) -> Any:
    """Read a YAML file and apply `key=value` overrides to it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    for override in overrides:
        raw = apply_override(raw, override, str(path))
    return raw


def validate(model: type[BaseModel], raw: Any, source: str, prefix: str = "", what: str | None = None) -> BaseModel:
    """`model.model_validate(raw)`, with errors as a ConfigError naming `source` and key paths."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, prefix, what)) from exc


def format_errors(source: str, exc: ValidationError, prefix: str = "", what: str | None = None) -> str:
    """One line per error: `source: key.path: message (got value)`."""
    lines = []
    for error in exc.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        key = (prefix + key) if prefix else key.lstrip(".")
        whole = isinstance(error["input"], dict)  # a rule over several keys: the message names them
        got = "" if error["type"] == "missing" or whole else f" (got {error['input']!r})"
        where = f" {key or prefix}:" if key or prefix else ""
        lines.append(f"{source}:{where} {error['msg']}{got}" + (f" [{what}]" if what else ""))
    return "\n".join(lines)


_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_override(raw: Any, override: str, source: str) -> Any:
    """Set `key=value` in the raw mapping; keys are paths like `output` or `stages[2].min_words`.

    The value is parsed as YAML, so `3` is an int, `[en, de]` a list and `null` None.
    """
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. stages[1].min_words=3")
    key, text = override.split("=", 1)
    parts = [name if name else int(idx) for name, idx in _KEY_PART.findall(key.strip())]
    if not parts:
        raise ConfigError(f"--set {override!r}: empty key")
    value = yaml.safe_load(text)
    node = raw
    for depth, part in enumerate(parts[:-1]):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            walked = key.split("=")[0]
            raise ConfigError(f"--set {override!r}: {source} has no key {walked!r} (failed at {parts[: depth + 1]})") from None
    last = parts[-1]
    if isinstance(last, int) and not (isinstance(node, list) and last < len(node)):
        raise ConfigError(f"--set {override!r}: index {last} is out of range in {source}")
    node[last] = value
    return raw
