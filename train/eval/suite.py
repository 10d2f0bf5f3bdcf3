"""Evaluation suites: a YAML list of typed tasks over Parquet data: zero-shot and retrieval (CLIP),
captioning and VQA (LLaVA).

```yaml
max_samples: 500                 # optional: at most this many rows per task, evenly spread (a task may set its own)
tasks:
  - name: openclipart_category
    kind: zeroshot               # zeroshot | retrieval
    data: data/openclipart/eval  # a Parquet file or a folder of them
    label_column: category
    templates: ["a drawing of {c}.", "clip art of {c}."]
  - name: openclipart_captions
    kind: retrieval
    data: data/openclipart/eval
    caption_column: text
  - name: openclipart_captioning   # LLaVA: BLEU-4, METEOR, CIDEr against the captions
    kind: captioning
    data: data/openclipart/eval
    caption_column: text
  - name: openclipart_vqa          # LLaVA: questions about the label, exact match against it
    kind: vqa
    data: data/openclipart/eval
    label_column: category
    questions: ["What category does this drawing belong to?"]
```

Relative `data` paths resolve against the suite file's folder, then the current directory.
A task may name a `builtin` data set (`digits`) that is written to its `data` path when that
file is missing (relative to the current directory). Everything, including the data files,
their columns and the labels, is checked by `load_suite` before any work; an error names
the file, the key path (e.g. `tasks[1].kind`) and what was expected.

Zero-shot: the class names are `classnames` (default: the sorted distinct labels); labels
are read as strings and every label must be one of the class names. A class's prompts are
the templates with `{c}` replaced by its name, underscores shown as spaces
(`signs_and_symbols` -> "a drawing of signs and symbols."). A VQA task reads its labels the
same way and asks every image each of its `questions` (default: the category questions of
the stage-2 conversation set); the answer is the label. Rows without an image, or without a
label (zeroshot, vqa) or a non-blank caption (retrieval, captioning), are skipped and counted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from curate.config import ConfigError, load_yaml, validate
from train.eval.datasets import BUILTINS
from train.llava.conversations import QUESTIONS

DEFAULT_TEMPLATES = ("a drawing of a {c}.", "a photo of a {c}.", "an illustration of {c}.")
Template = Annotated[str, StringConstraints(pattern=r"\{c\}")]
LABEL_KINDS, CAPTION_KINDS = ("zeroshot", "vqa"), ("retrieval", "captioning")
CLIP_KINDS, LLAVA_KINDS = ("zeroshot", "retrieval"), ("captioning", "vqa")
_KINDS_OF_FIELD = {"label_column": LABEL_KINDS, "classnames": LABEL_KINDS, "templates": ("zeroshot",),
                   "caption_column": CAPTION_KINDS, "questions": ("vqa",), "max_new_tokens": LLAVA_KINDS}
_REQUIRED_FIELDS = {"label_column", "caption_column"}


class SuiteError(ConfigError):
    """A suite file or its data is not valid; the message names the file, the key path and the problem."""


class TaskSpec(BaseModel):
    """One task of a suite, as written in the YAML (after `load_suite`, `data` is an absolute path)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["zeroshot", "retrieval", "captioning", "vqa"]
    data: str = Field(min_length=1, description="a Parquet file or a folder of Parquet files")
    builtin: Literal["digits"] | None = Field(None, description="bundled data set written to `data` when missing")
    image_column: str = "image"
    label_column: str | None = Field(None, validate_default=True, description="zeroshot, vqa: the class label")
    caption_column: str | None = Field(None, validate_default=True,
                                       description="retrieval, captioning: the caption (captioning: the reference)")
    classnames: list[str] | None = Field(None, min_length=1,
                                         description="zeroshot, vqa: the classes (default: the labels)")
    templates: list[Template] | None = Field(None, min_length=1, description="zeroshot: prompts with {c}")
    questions: list[Annotated[str, StringConstraints(min_length=1)]] | None = Field(
        None, min_length=1, description="vqa: questions whose answer is the label [default: the category questions]")
    max_new_tokens: int | None = Field(None, gt=0,
                                       description="captioning, vqa: tokens generated per text [default: 32, vqa 8]")
    max_samples: int | None = Field(None, gt=0, description="use at most this many (usable) rows")

    @field_validator("label_column", "caption_column", "classnames", "templates", "questions", "max_new_tokens")
    @classmethod
    def _fits_kind(cls, value, info: ValidationInfo):
        kind, kinds = info.data.get("kind"), _KINDS_OF_FIELD[info.field_name]
        if kind is not None and kind not in kinds and value is not None:
            raise PydanticCustomError("kind", "only used by {wanted} tasks, not {kind}",
                                      {"wanted": " and ".join(kinds), "kind": kind})
        if kind in kinds and value is None and info.field_name in _REQUIRED_FIELDS:
            raise PydanticCustomError("missing", "required for {kind} tasks", {"kind": kind})
        return value

    def columns(self) -> dict[str, str]:
        """The columns this task reads, by key: the image and the label (zeroshot, vqa) or caption (retrieval,
        captioning)."""
        if self.kind in LABEL_KINDS:
            return {"image_column": self.image_column, "label_column": self.label_column}
        return {"image_column": self.image_column, "caption_column": self.caption_column}

    @property
    def prompt_templates(self) -> list[str]:
        """The zero-shot templates: the task's own, else DEFAULT_TEMPLATES."""
        return list(self.templates or DEFAULT_TEMPLATES)

    @property
    def tokens_per_text(self) -> int:
        """Tokens a LLaVA generates per caption (default 32) or per VQA answer (default 8: a label is short)."""
        return self.max_new_tokens or (8 if self.kind == "vqa" else 32)

    @property
    def vqa_questions(self) -> list[str]:
        """The VQA questions: the task's own, else the category questions of the conversation set."""
        return list(self.questions or QUESTIONS["category"])

    def prompts(self, classname: str) -> list[str]:
        """The texts for one class: every template with {c} replaced by the name, underscores as spaces."""
        return [t.replace("{c}", classname.replace("_", " ")) for t in self.prompt_templates]


class SuiteSpec(BaseModel):
    """The top level of a suite file."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] = Field(min_length=1)
    max_samples: int | None = Field(None, gt=0, description="default cap on rows per task")


@dataclass(frozen=True)
class Suite:
    """A validated suite: tasks with resolved data paths and row caps, and the file it came from."""

    tasks: list[TaskSpec]
    source: str


@dataclass(frozen=True)
class TaskData:
    """A task's usable rows: encoded images with class indices (zeroshot, vqa) or captions (retrieval,
    captioning)."""

    images: list[bytes]
    targets: list[int]
    captions: list[str]
    classnames: list[str]
    skipped: int


def require_kinds(suite: Suite, kinds: tuple[str, ...], model: str) -> None:
    """Fail unless every task of the suite is one of `kinds` (what a `model` can be scored on)."""
    wrong = [f"{task.name} ({task.kind})" for task in suite.tasks if task.kind not in kinds]
    if wrong:
        raise SuiteError(f"{suite.source}: a {model} model is scored on {' and '.join(kinds)} tasks; "
                         f"this suite also has {', '.join(wrong)}")


def open_image(task: TaskSpec, row: int, data: bytes) -> Image.Image:
    """Decode row `row`'s encoded image as RGB; a SuiteError names the task, row and file when it cannot be."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SuiteError(f"task {task.name!r}: usable row {row} of {task.data}: image cannot be decoded "
                         f"({type(exc).__name__}: {exc})") from exc


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file and the data it names; raises SuiteError."""
    path = Path(path)
    try:
        raw = load_yaml(path, kind="suite")
        if not isinstance(raw, dict):
            raise SuiteError(f"{path}: expected a mapping with a `tasks:` list, got {type(raw).__name__}")
        spec = validate(SuiteSpec, raw, str(path))
    except ConfigError as exc:
        raise SuiteError(str(exc)) from exc
    seen: dict[str, int] = {}
    tasks = []
    for i, task in enumerate(spec.tasks):
        where = f"{path}: tasks[{i}]"
        if task.name in seen:
            raise SuiteError(f"{where}.name: duplicate task name {task.name!r} (also tasks[{seen[task.name]}])")
        seen[task.name] = i
        data = _resolve(task, path.parent, where)
        task = task.model_copy(update={"data": str(data), "max_samples": task.max_samples or spec.max_samples})
        _check_data(task, where)
        tasks.append(task)
    return Suite(tasks, str(path))


def _resolve(task: TaskSpec, suite_dir: Path, where: str) -> Path:
    """The task's data path: as given if absolute, else under the suite's folder, else under the cwd."""
    given = Path(task.data).expanduser()
    candidates = [given] if given.is_absolute() else [suite_dir / given, Path.cwd() / given]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    if task.builtin is not None:
        return candidates[-1].absolute()
    raise SuiteError(f"{where}.data: {task.data!r} not found (looked for {', '.join(map(str, candidates))})")


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a data path: the file itself, or a folder's *.parquet files in name order."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if p.is_file())


def _check_data(task: TaskSpec, where: str) -> None:
    """Fail unless every file has the task's columns (the image as bytes) and every label is a class name."""
    path = Path(task.data)
    if not path.exists():  # a builtin data set, written on first use
        missing = [c for c in task.columns().values() if c not in BUILTINS[task.builtin].columns]
        if missing:
            raise SuiteError(f"{where}: builtin {task.builtin!r} has no column(s) {missing} "
                             f"(its columns: {', '.join(BUILTINS[task.builtin].columns)})")
        return
    files = parquet_files(path)
    if not files:
        raise SuiteError(f"{where}.data: no Parquet files in {path}")
    for file in files:
        try:
            schema = pq.read_schema(file)
        except (OSError, pa.ArrowException) as exc:
            raise SuiteError(f"{where}.data: {file} is not a readable Parquet file: {exc}") from exc
        for key, column in task.columns().items():
            if column not in schema.names:
                raise SuiteError(f"{where}.{key}: column {column!r} not in {file} "
                                 f"(its columns: {', '.join(schema.names)})")
        image_type = schema.field(task.image_column).type
        if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)):
            raise SuiteError(f"{where}.image_column: column {task.image_column!r} in {file} holds {image_type}, "
                             f"expected encoded image bytes (binary)")
        if task.kind in CAPTION_KINDS and not _is_string(schema.field(task.caption_column).type):
            raise SuiteError(f"{where}.caption_column: column {task.caption_column!r} in {file} holds "
                             f"{schema.field(task.caption_column).type}, expected strings")
    if task.kind in LABEL_KINDS and task.classnames is not None:
        labels = [_as_label(v) for file in files
                  for v in pq.read_table(file, columns=[task.label_column]).column(task.label_column).to_pylist()]
        _check_labels(task, labels, f"{where}.classnames: column {task.label_column!r} of {path}")


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _as_label(value: object) -> str | None:
    """A label as a string; null and blank labels are None (the row is skipped)."""
    return str(value) if value is not None and str(value).strip() else None


def _check_labels(task: TaskSpec, labels: list[str | None], where: str) -> None:
    """Fail when the task lists classnames and a label is not one of them."""
    if task.classnames is None:
        return
    unknown = sorted({label for label in labels if label is not None} - set(task.classnames))
    if unknown:
        raise SuiteError(f"{where}: labels {unknown[:10]} are not in classnames {task.classnames}")


def load_task_data(task: TaskSpec) -> TaskData:
    """A validated task's usable rows, at most `max_samples` of them spread evenly over the files.

    A builtin data set is written first when its file is missing.
    """
    path = Path(task.data)
    if not path.exists():
        BUILTINS[task.builtin].write(path)
    column = task.label_column if task.kind in LABEL_KINDS else task.caption_column
    images, values = [], []
    for file in parquet_files(path):
        table = pq.read_table(file, columns=list(task.columns().values()))
        images += table.column(task.image_column).to_pylist()
        values += table.column(column).to_pylist()
    if task.kind in LABEL_KINDS:
        values = [_as_label(v) for v in values]
        _check_labels(task, values, f"task {task.name!r}: column {column!r} of {path}")
    usable = [(image, value) for image, value in zip(images, values) if image and value and value.strip()]
    skipped = len(images) - len(usable)
    if not usable:
        raise SuiteError(f"task {task.name!r}: no usable rows in {path} ({skipped} skipped)")
    if task.kind in CAPTION_KINDS:
        usable = _spread(usable, task.max_samples)
        return TaskData([image for image, _ in usable], [], [caption for _, caption in usable], [], skipped)
    classnames = task.classnames or sorted({label for _, label in usable})
    index = {name: i for i, name in enumerate(classnames)}
    usable = _spread(usable, task.max_samples)
    return TaskData([image for image, _ in usable], [index[label] for _, label in usable], [], classnames, skipped)


def _spread(rows: list, limit: int | None) -> list:
    """At most `limit` rows, evenly spaced in order (every k-th row), so a cap keeps every part of the data."""
    if limit is None or limit >= len(rows):
        return rows
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]
