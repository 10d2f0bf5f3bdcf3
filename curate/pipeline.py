"""Pipeline files: a YAML with name, input, output and an ordered list of typed stages.

Everything is validated before any work starts; errors name the file, the key path
(e.g. `stages[2].min_words`) and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from curate.config import ConfigError, load_yaml, validate
from curate.schema import INPUT_SCHEMA
from curate.stage import Stage, StageConfig
from curate.stages import REGISTRY


class PipelineSettings(BaseModel):
    """The top level of a pipeline file, apart from its stages."""

    model_config = ConfigDict(extra="forbid")

    name: str
    input: str | list[str] | None = Field(None, description="Parquet/WebDataset/img2dataset path(s)")
    output: str | None = Field(None, description="output folder")
    batch_size: int = Field(256, gt=0, description="rows per batch handed to a stage")


@dataclass(frozen=True)
class StageSpec:
    """One validated entry of `stages:`: a registered stage name and its typed config."""

    name: str
    config: StageConfig

    def build(self) -> Stage:
        """A fresh stage object (models are loaded later, by `setup`)."""
        return REGISTRY[self.name](self.config)


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: settings, the stage specs in order, and the file it came from."""

    settings: PipelineSettings
    stages: list[StageSpec]
    source: str = "<memory>"
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.settings.name

    def build_stages(self) -> list[Stage]:
        """Fresh stage objects for a worker."""
        return [spec.build() for spec in self.stages]

    def check_columns(self, input_columns: list[str]) -> None:
        """Fail when a stage reads a column that neither the input nor an earlier stage provides."""
        available = set(input_columns) | set(INPUT_SCHEMA.names)
        for i, spec in enumerate(self.stages):
            cls = REGISTRY[spec.name]
            missing = [c for c in cls.reads if c not in available]
            if missing:
                writers = sorted(n for n, s in REGISTRY.items() if set(missing) & set(s.writes))
                hint = f"; add one of {writers} before it" if writers else ""
                raise ConfigError(
                    f"{self.source}: stages[{i}] ({spec.name}) reads column(s) {missing} that the input "
                    f"and earlier stages do not provide{hint}"
                )
            available |= set(cls.writes)


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    """Read, override (`key=value`) and validate a pipeline file."""
    return parse_pipeline(load_yaml(path, overrides), str(path))


def parse_pipeline(raw: Any, source: str) -> Pipeline:
    """Validate an already-loaded pipeline mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with name, input, output and stages, got {type(raw).__name__}")
    raw = dict(raw)
    stage_entries = raw.pop("stages", None)
    settings = validate(PipelineSettings, raw, source)
    if not isinstance(stage_entries, list) or not stage_entries:
        raise ConfigError(f"{source}: stages: expected a non-empty list of stages, got {stage_entries!r}")
    specs = [_parse_stage(entry, i, source) for i, entry in enumerate(stage_entries)]
    return Pipeline(settings, specs, source, {**raw, "stages": stage_entries})


def _parse_stage(entry: Any, index: int, source: str) -> StageSpec:
    where = f"{source}: stages[{index}]"
    if not isinstance(entry, dict) or "stage" not in entry:
        raise ConfigError(f"{where}: expected a mapping with a 'stage' key naming the stage, got {entry!r}")
    params = dict(entry)
    name = params.pop("stage")
    if name not in REGISTRY:
        raise ConfigError(f"{where}.stage: unknown stage {name!r}; known stages: {', '.join(sorted(REGISTRY))}")
    return StageSpec(name, validate(REGISTRY[name].Config, params, source, f"stages[{index}]", f"stage {name}"))


