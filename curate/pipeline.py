"""Pipeline files: a YAML with name, input, output and an ordered list of typed stages.

Everything is validated before any work starts; errors name the file, the key path
(e.g. `stages[2].min_words`) and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curate.config import ConfigError, load_yaml, short_repr, suggest, validate
from curate.io.readers.contract import ReadLimits
from curate.schema import INPUT_SCHEMA
from curate.stage import Stage, StageConfig
from curate.stages import REGISTRY

OUTPUTS = ("parquet", "webdataset", "uids")  # what a run can write, and by default does


class PipelineSettings(BaseModel):
    """The top level of a pipeline file, apart from its stages."""

    model_config = ConfigDict(extra="forbid")

    name: str
    input: str | list[str] | None = Field(None, description="Parquet/WebDataset/img2dataset path(s)")
    output: str | None = Field(None, description="output folder")
    batch_size: int = Field(256, gt=0, description="rows per batch handed to a stage")
    partition_rows: int = Field(
        500_000, gt=0, description="rows per partition of a global stage's shuffle (bounds each worker's memory)")
    outputs: list[Literal["parquet", "webdataset", "uids"]] = Field(
        default_factory=lambda: list(OUTPUTS), description="what a run writes besides the ledger, stats and report: "
        "kept rows as Parquet parts, as WebDataset tars (shards/), DataComp's uids.npy")
    samples_per_shard: int | None = Field(
        None, gt=0, description="samples per WebDataset shard (img2dataset's number_sample_per_shard; the last "
        "shard holds the rest): the tasks' kept samples are resharded at the end of the run; null: a shard per "
        "input task. shards/sizes.json gives every shard's count either way (open_clip_train reads it)")
    max_member_bytes: int = Field(
        ReadLimits.max_member_bytes, gt=0, description="largest tar member, image file or Parquet image cell read "
        "(bytes; default 64 MiB): a larger one is not loaded, its sample goes to the ledger (member_too_large, "
        "image_too_large)")
    max_caption_bytes: int = Field(
        ReadLimits.max_caption_bytes, gt=0, description="longest caption read (UTF-8 bytes; default 64 KiB): a "
        "longer one is rejected at read time (caption_too_long)")
    on_unreadable: Literal["fail", "ledger"] = Field(
        "fail", description="a Parquet row group that cannot be read (a corrupt page): fail the run naming the file "
        "and row group, or send its rows (counted from the file's metadata) to the ledger as unreadable_row_group")

    limit: int | None = Field(
        None, gt=0, description="read only the input's first N samples, in input order (a quick try; `curate run "
        "--limit N`); the tasks after them are not read")

    def read_limits(self) -> ReadLimits:
        """The readers' size caps and what they do with an unreadable row group."""
        return ReadLimits(self.max_member_bytes, self.max_caption_bytes, self.on_unreadable)

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, outputs: list[str]) -> list[str]:
        if "parquet" not in outputs:
            raise ValueError("must include parquet: the kept Parquet parts are what stats, the report and resume "
                             "read; choose webdataset and uids beside it (e.g. [parquet, uids] for a metadata run)")
        if len(set(outputs)) != len(outputs):
            raise ValueError("names an output more than once")
        return outputs


@dataclass(frozen=True)
class StageSpec:
    """One validated entry of `stages:`: a registered stage name and its typed config."""

    name: str
    config: StageConfig

    def build(self) -> Stage:
        """A fresh stage object (models are loaded later, by `setup`)."""
        return REGISTRY[self.name](self.config)

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """The column sets this configured stage can work from, preferred first: its config's
        `reads_one_of()` where the config defines one (columns that depend on the parameters or
        on the input: exact_dedup on url_text reads no image, image_size reads DataComp's original
        sizes when no decode ran), else the class's `reads`."""
        choices = getattr(self.config, "reads_one_of", None)
        return choices() if choices is not None else [REGISTRY[self.name].reads]


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

    def check_columns(self, input_columns: list[str] | None = None) -> None:
        """Fail when a stage reads a column that neither the input nor an earlier stage provides.

        `input_columns` are the columns the input holds (the readers always give uid, url and
        text); without `image` the input is metadata (no image bytes), and a stage that needs
        images fails with the fixes. None when the input is not known: it is then taken to hold
        the core columns and any column that no stage writes (a score column, original_width).
        """
        if input_columns is None:
            read = {c for spec in self.stages for choice in spec.reads_one_of() for c in choice}
            written = {c for cls in REGISTRY.values() for c in cls.writes}
            input_columns = list(INPUT_SCHEMA.names) + sorted(read - written)
        available = set(input_columns) | set(ALWAYS_READ)
        for i, spec in enumerate(self.stages):
            choices = spec.reads_one_of()
            if not any(set(choice) <= available for choice in choices):
                raise ConfigError(f"{self.source}: stages[{i}] ({spec.name}) {_missing(spec, choices, available)}")
            available |= set(REGISTRY[spec.name].writes)


# columns every reader yields whatever the input (`image` too, but null when the input has none)
ALWAYS_READ = ("uid", "url", "text")
# the metadata form of a stage that reads images: how it runs without them
METADATA_FORMS = {
    "decode": "without it, image_size reads original_width/original_height",
    "exact_dedup": "or use key: url_text",
    "clip_score": "or set score_column to the input's precomputed score column",
    "near_dedup": "or set hash_column to the input's precomputed pHash column",
}


def _missing(spec: StageSpec, choices: list[tuple[str, ...]], available: set[str]) -> str:
    """What a stage lacks and how to fix it, for check_columns's error."""
    if "image" not in available and all("image" in choice for choice in choices):
        form = METADATA_FORMS.get(spec.name)
        return ("needs image bytes (it reads the 'image' column), but the input holds none and no earlier stage "
                "downloads them: this is a metadata run. Add a 'download' stage before it, give an input with images, "
                "or remove the stage" + (f" ({form})" if form else ""))
    wants = []
    for choice in choices:
        missing = [c for c in choice if c not in available]
        writers = sorted(n for n, cls in REGISTRY.items() if set(missing) & set(cls.writes))
        remedy = f"add one of {writers} before it" if writers else "the input must hold them"
        wants.append(f"{missing} ({remedy})")
    return f"reads column(s) {' or '.join(wants)} that the input and earlier stages do not provide"


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    """Read, override (`key=value`) and validate a pipeline file; every problem of the file is
    reported at once (one line each), and a file of another kind (an ablation file, say) is
    refused naming the command that takes it."""
    raw = load_yaml(path, overrides, "pipeline")
    return parse_pipeline(raw, str(path))


def parse_pipeline(raw: Any, source: str) -> Pipeline:
    """Validate an already-loaded pipeline mapping; a ConfigError lists every problem found."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with name, input, output and stages, got {type(raw).__name__}")
    raw = dict(raw)
    stage_entries = raw.pop("stages", None)
    problems: list[str] = []
    settings = _collect(problems, validate, PipelineSettings, raw, source)
    if not isinstance(stage_entries, list) or not stage_entries:
        problems.append(f"{source}: stages: expected a non-empty list of stages, got {short_repr(stage_entries)}")
        stage_entries = []
    specs = [_collect(problems, _parse_stage, entry, i, source) for i, entry in enumerate(stage_entries)]
    if problems:
        raise ConfigError("\n".join(problems))
    return Pipeline(settings, specs, source, {**raw, "stages": stage_entries})


def _collect(problems: list[str], fn, *args):
    """`fn(*args)`, or None with its ConfigError's lines added to `problems`."""
    try:
        return fn(*args)
    except ConfigError as exc:
        problems.append(str(exc))
        return None


def _parse_stage(entry: Any, index: int, source: str) -> StageSpec:
    where = f"{source}: stages[{index}]"
    if not isinstance(entry, dict) or "stage" not in entry:
        raise ConfigError(f"{where}: expected a mapping with a 'stage' key naming the stage, got {short_repr(entry)}")
    params = dict(entry)
    name = params.pop("stage")
    if not isinstance(name, str) or name not in REGISTRY:
        hint = suggest(name, list(REGISTRY)) if isinstance(name, str) else ""
        raise ConfigError(f"{where}.stage: unknown stage {short_repr(name)}; {hint}known stages: "
                          f"{', '.join(sorted(REGISTRY))}")
    return StageSpec(name, validate(REGISTRY[name].Config, params, source, f"stages[{index}]", f"stage {name}"))


# config keys that name a file or folder a stage reads, and what writes it when it is missing
READ_PATHS = {
    "checkpoint": "a checkpoint: train one with `curate train clip` (clip_score) or `curate train llava` (recaption)",
    "metadata": "an entry list: build it with `curate metadata build --out FILE`",
    "eval_data": "evaluation data: `curate sample openclipart` writes data/openclipart/eval",
    "target": "a target image set",
    "blocklist_file": "a word list",
    "language.model": "a fastText model file",  # elsewhere `model` names an architecture, not a file
}


def missing_files(pipeline: Pipeline, input_paths: str | list[str] | None = None) -> list[str]:
    """The local paths a run would read that do not exist: the input (given, or the file's) and
    the checkpoints, metadata and data sets its stages name; one line each, with what makes them.
    URLs and patterns are not looked up (the readers check them when the run plans its input)."""
    from curate.io.paths import is_url

    def absent(path: str) -> bool:
        return not is_url(path) and not any(c in path for c in "*?[{") and not Path(path).exists()

    problems = []
    inputs = input_paths or pipeline.settings.input or []
    for path in [inputs] if isinstance(inputs, str) else inputs:
        if absent(path):
            problems.append(f"{pipeline.source}: input: {path}: no such file or folder")
    for i, spec in enumerate(pipeline.stages):
        for named, what in READ_PATHS.items():
            stage, _, key = named.rpartition(".")
            value = getattr(spec.config, key, None) if stage in ("", spec.name) else None
            for path in [value] if isinstance(value, str) else value or []:
                if isinstance(path, str) and absent(path):
                    problems.append(f"{pipeline.source}: stages[{i}].{key}: {path}: no such file or folder ({what})")
    return problems
