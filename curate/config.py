"""Typed YAML configs: loading, `key=value` overrides and validation errors that name the
file and the key path. Pipelines and trainer configs both use these."""

from __future__ import annotations

import difflib
import re
import reprlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(ValueError):
    """A config file (or override) is not valid; the message says where and why."""


def load_yaml(path: str | Path, overrides: list[str] = (), kind: str | None = None) -> Any:
    """Read a YAML file and apply `key=value` overrides to it; with `kind` (a FILE_KINDS key),
    refuse a file of another kind (an ablation file where a pipeline was expected, say)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if kind is not None:
        check_kind(raw, kind, str(path))
    for override in overrides:
        raw = apply_override(raw, override, str(path))
    return raw


MAX_YAML_VALUES = 100_000  # values a YAML document may stand for once its aliases are expanded


def parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load(text)`, refusing a document whose aliases (`*name`) expand to more than
    MAX_YAML_VALUES values (an alias bomb: 500 bytes can stand for billions of values, which
    validating or printing would expand), a recursive alias, or nesting too deep to parse."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int], source: str) -> int:
    """How many values `node` stands for with every alias expanded (each shared node counted once
    per use, computed once); raises past MAX_YAML_VALUES or on a node that contains itself."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise ConfigError(f"{source}: a YAML alias refers to a value that contains it (a recursive anchor)")
    open_.add(key)
    children = node.value if isinstance(node, yaml.CollectionNode) else []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in children for part in pair]
    size = 1 + sum(_expanded_size(child, sizes, open_, source) for child in children)
    if size > MAX_YAML_VALUES:
        raise ConfigError(f"{source}: the YAML stands for more than {MAX_YAML_VALUES:,} values once its aliases "
                          "(*name) are expanded: an alias bomb? Write the values out, or use fewer aliases")
    open_.discard(key)
    sizes[key] = size
    return size


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 80, 80


def short_repr(value: Any, limit: int = 200) -> str:
    """`repr(value)` cut to about `limit` characters (nested containers elided), for error messages:
    never a whole rejected value, however large."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate(model: type[Model], raw: Any, source: str, prefix: str = "", what: str | None = None) -> Model:
    """`model.model_validate(raw)`, with errors as a ConfigError naming `source` and key paths
    (every error of `raw` at once; an unknown key with the known keys closest to it)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, prefix, what, model)) from exc


def updated(config: Model, source: str, **changes: Any) -> Model:
    """`config` with `changes` set, validated again: `config.model_copy(update=changes)` would skip
    validation, so a wrong type or a broken rule across keys would pass. The changes are typed values
    (a path stays the path, where a `key=value` string would be parsed as YAML); errors name `source`."""
    return validate(type(config), {**config.model_dump(), **changes}, source)


def format_errors(source: str, exc: ValidationError, prefix: str = "", what: str | None = None,
                  model: type[BaseModel] | None = None) -> str:
    """One line per error: `source: key.path: message (got value)`, the value shortened."""
    lines = []
    for error in exc.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        key = (prefix + key) if prefix else key.lstrip(".")
        whole = isinstance(error["input"], dict)  # a rule over several keys: the message names them
        got = "" if error["type"] == "missing" or whole else f" (got {short_repr(error['input'])})"
        if error["type"] == "extra_forbidden" and model is not None:
            got = _did_you_mean(str(error["loc"][-1]), _fields_at(model, error["loc"][:-1]))
        where = f" {key or prefix}:" if key or prefix else ""
        lines.append(f"{source}:{where} {error['msg']}{got}" + (f" [{what}]" if what else ""))
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the (nested) model at `loc`, for suggestions; [] where not a model."""
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(info, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _did_you_mean(word: str, choices: list[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, else the known choices, else ''."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(choices)})" if choices else ""


def suggest(word: str, choices: list[str]) -> str:
    """`did you mean 'x'? ` for the choice closest to `word`, or '' (for unknown names in messages)."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


# Keys that tell each kind of YAML file apart (any one of them), what it is and the command that takes it.
FILE_KINDS = {
    "pipeline": (("stages",), "a pipeline file", "curate run FILE (or curate validate FILE)"),
    "ablation": (("recipes",), "an ablation file", "curate ablate FILE"),
    "bootstrap": (("base",), "a bootstrap file", "curate bootstrap FILE"),
    "suite": (("tasks",), "an evaluation suite", "curate eval --checkpoint CKPT --suite FILE"),
    "training": (("lr", "warmup_steps", "checkpoint_every", "grad_accum"), "a training config",
                 "curate train clip|llava --config FILE"),
}


def check_kind(raw: Any, expected: str, source: str) -> None:
    """Refuse a file of another kind than `expected` (an ablation file given to `curate run`, say),
    naming what it is and the command that takes it."""
    if not isinstance(raw, dict) or any(key in raw for key in FILE_KINDS[expected][0]):
        return
    for kind, (keys, what, command) in FILE_KINDS.items():
        found = [key for key in keys if key in raw]
        if kind != expected and found:
            raise ConfigError(f"{source}: this is {what} (it has '{found[0]}:'), not {FILE_KINDS[expected][1]}: "
                              f"use {command.replace('FILE', source)}")


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
    value = parse_yaml(text, f"--set {key.strip()}")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            walked = key.split("=")[0]
            raise ConfigError(f"--set {override!r}: {source} has no key {walked!r} "
                              f"(failed at {parts[: depth + 1]})") from None
    last = parts[-1]
    if isinstance(last, int) and not (isinstance(node, list) and last < len(node)):
        raise ConfigError(f"--set {override!r}: index {last} is out of range in {source}")
    node[last] = value
    return raw
