"""Readers: Parquet files, WebDataset tars and img2dataset output folders, cut into tasks.

A task is the unit of work and of resume: one Parquet row group, one tar, or one
img2dataset `files` subfolder. Reading a task yields `Verdict`s in the core schema, so a
sample that cannot be read whole (a tar cut off mid-member) still reaches the ledger.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.schema import INPUT_NEEDS, make_uid, normalize
from curate.stage import Verdict

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
URL_LIST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
# img2dataset's parquet output names the image column after its format and the text "caption"
COLUMN_ALIASES = {"caption": "text", "jpg": "image", "png": "image", "webp": "image"}
READ_STAGE = "read"


class InputError(ValueError):
    """An input path cannot be read; the message names it and says what was expected."""


@dataclass(frozen=True)
class InputTask:
    """One unit of input: a Parquet row group, a tar, or a folder of files."""

    index: int
    kind: str  # "parquet" | "tar" | "files" | "url_list"
    path: str
    row_group: int = 0
    rows: int | None = None  # known up front for Parquet

    def describe(self) -> str:
        return f"{self.path} (row group {self.row_group})" if self.kind == "parquet" else self.path


def plan_inputs(paths: str | list[str]) -> list[InputTask]:
    """Expand input paths into tasks, checking every file can be opened before work starts."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise InputError("no input given: set 'input' in the pipeline or pass --input")
    tasks: list[InputTask] = []
    for raw in paths:
        for kind, path in _expand(Path(raw)):
            if kind == "parquet":
                try:
                    meta = pq.ParquetFile(path).metadata
                except (pa.ArrowInvalid, OSError) as exc:
                    raise InputError(f"{path}: not a readable Parquet file (half-written?): {exc}") from exc
                names = set(meta.schema.names)
                if not ({"text", "caption"} & names and {"image", "jpg", "png", "webp", "url"} & names):
                    raise InputError(f"{path}: missing column(s): an input needs {INPUT_NEEDS}, found {sorted(names)}")
                for rg in range(meta.num_row_groups):
                    tasks.append(InputTask(len(tasks), kind, str(path), rg, meta.row_group(rg).num_rows))
            else:
                tasks.append(InputTask(len(tasks), kind, str(path)))
    if not tasks:
        raise InputError(f"no Parquet files, tars or image folders found under {paths}")
    return tasks


def _expand(path: Path) -> list[tuple[str, Path]]:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".parquet":
            return [("parquet", path)]
        if path.suffix == ".tar":
            return [("tar", path)]
        if path.suffix in URL_LIST_SUFFIXES:
            return [("url_list", path)]
        raise InputError(f"{path}: expected a .parquet file, a .tar WebDataset shard, a URL list "
                         f"({', '.join(URL_LIST_SUFFIXES)}) or a folder")
    tars = sorted(path.rglob("*.tar"))
    if tars:  # img2dataset's webdataset output also has per-shard .parquet metadata: the tars hold the samples
        return [("tar", p) for p in tars]
    parquets = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
    if parquets:
        return [("parquet", p) for p in parquets]
    folders = sorted({p.parent for ext in IMAGE_EXTENSIONS for p in path.rglob(f"*.{ext}")})
    if folders:
        return [("files", p) for p in folders]
    return [("url_list", p) for p in sorted(path.rglob("*")) if p.suffix in URL_LIST_SUFFIXES]


def read_task(task: InputTask, batch_size: int) -> Iterator[Verdict]:
    """Batches of the task's samples in the core schema, with read failures as rejections."""
    if task.kind in ("parquet", "url_list"):
        table = _parquet_file(task.path).read_row_group(task.row_group) if task.kind == "parquet" else _url_list(task)
        table = table.rename_columns([_alias(c, table.column_names) for c in table.column_names])
        try:
            table = normalize(table, task.describe())
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        for start in range(0, max(table.num_rows, 1), batch_size):  # an empty task still yields its schema
            yield Verdict(table.slice(start, batch_size))
        return
    samples = _tar_samples(task.path) if task.kind == "tar" else _folder_samples(Path(task.path))
    batch: list[dict] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield _samples_to_verdict(batch, task)
            batch = []
    if batch:
        yield _samples_to_verdict(batch, task)


def holds_images(task: InputTask) -> bool:
    """Whether the task's source has an image column (where it has none, the readers' `image` is
    null): tars and image folders do, URL lists do not, a Parquet when it has image/jpg/png/webp."""
    if task.kind == "parquet":
        return bool({"image", "jpg", "png", "webp"} & set(_parquet_file(task.path).schema_arrow.names))
    return task.kind != "url_list"


def _url_list(task: InputTask) -> pa.Table:
    """A CSV/TSV or JSON-lines list of URLs and captions (img2dataset's input formats)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    path = Path(task.path)
    try:
        if path.suffix in (".csv", ".tsv"):
            options = pcsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
            # every column as text: a caption of digits must stay a caption
            return pcsv.read_csv(path, parse_options=options,
                                 convert_options=pcsv.ConvertOptions(column_types=_all_strings(path, options)))
        return pjson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable URL list: {exc}") from exc


def _all_strings(path: Path, options) -> dict:
    import pyarrow.csv as pcsv

    header = pcsv.open_csv(path, parse_options=options).schema.names
    return {name: pa.string() for name in header}


@lru_cache(maxsize=8)
def _parquet_file(path: str) -> pq.ParquetFile:
    """An open Parquet file, kept while its row groups are read one task after another."""
    return pq.ParquetFile(path)


def _alias(column: str, columns: list[str]) -> str:
    target = COLUMN_ALIASES.get(column)
    return target if target and target not in columns else column


def _samples_to_verdict(samples: list[dict], task: InputTask) -> Verdict:
    table = normalize(
        pa.table(
            {
                "uid": pa.array([s["uid"] for s in samples], pa.string()),
                "url": pa.array([s["url"] for s in samples], pa.string()),
                "text": pa.array([s["text"] for s in samples], pa.string()),
                "image": pa.array([s["image"] for s in samples], pa.binary()),
            }
        ),
        task.describe(),
    )
    return Verdict(table, [s["error"] for s in samples], [s["error_value"] for s in samples])


def _sample(key: str, files: dict[str, bytes], error: str | None = None, error_value: str | None = None) -> dict:
    meta = {}
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except (ValueError, UnicodeDecodeError):
            error, error_value = error or "bad_metadata", error_value or f"{key}.json is not valid JSON"
    text = files["txt"].decode("utf-8", errors="replace") if "txt" in files else meta.get("caption")
    image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
    url = meta.get("url")
    uid = str(meta.get("uid") or make_uid(url or key, text))
    return {"uid": uid, "url": url, "text": text, "image": image, "error": error, "error_value": error_value}


def _tar_samples(path: str) -> Iterator[dict]:
    """Samples of a WebDataset tar, grouped by key; a tar cut off mid-sample ends with that
    sample flagged `truncated_shard` instead of an exception (webdataset would drop it)."""
    key, files = None, {}
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if not member.isfile() or "." not in Path(member.name).name:
                    continue
                stem, ext = _split_key(member.name)
                if key is not None and stem != key:
                    yield _sample(key, files)
                    files = {}
                key = stem
                files[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.ReadError, EOFError, OSError) as exc:
        if key is None:
            raise InputError(f"{path}: not a readable tar (compressed or corrupt?): {exc}") from exc
        yield _sample(key, files, "truncated_shard", f"{path}: {exc}")
        return
    if key is not None:
        yield _sample(key, files)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset naming: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _folder_samples(folder: Path) -> Iterator[dict]:
    """Samples of an img2dataset `files` folder: {key}.jpg beside {key}.txt and {key}.json."""
    groups: dict[str, dict[str, bytes]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and "." in path.name:
            stem, ext = _split_key(path.name)
            groups.setdefault(stem, {})[ext.lower()] = path.read_bytes()
    for key, files in groups.items():
        yield _sample(key, files)
