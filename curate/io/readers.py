"""Readers: Parquet files, WebDataset tars and img2dataset output folders, cut into tasks.

A task is the unit of work and of resume: one Parquet row group, one tar, or one
img2dataset `files` subfolder. Reading a task yields `Verdict`s in the core schema, so a
sample that cannot be read whole (a tar cut off mid-member) still reaches the ledger.
Inputs are local paths or URLs (s3://, gs://, hf://, ...; see curate.io.paths), with globs
and brace ranges (`s3://bucket/shards/{00000..00099}.tar`).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.paths import (StorageError, expand, file_sizes, files_in, files_under, is_folder, is_url, open_input,
                             read_files, readable)
from curate.schema import INPUT_NEEDS, make_uid, normalize
from curate.stage import Verdict

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
URL_LIST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
# img2dataset's parquet output names the image column after its format and the text "caption"
COLUMN_ALIASES = {"caption": "text", "jpg": "image", "png": "image", "webp": "image"}
READ_STAGE = "read"
METADATA_THREADS = 16  # Parquet footers on object storage read at once while planning (each a round trip)

InputError = StorageError  # an input path or URL cannot be read; the message names it and says what was expected


@dataclass(frozen=True)
class ReadLimits:
    """Sizes above which the readers do not load a value: its sample goes to the ledger instead
    (`member_too_large`: a tar member or image file, `image_too_large`: a Parquet image cell,
    `caption_too_long`: a caption, in UTF-8 bytes). A tar member's size is in its header, so an
    oversized member is skipped unread; a Parquet row group is read whole, then its oversized
    cells are rejected before any stage sees them."""

    max_member_bytes: int = 64 << 20
    max_caption_bytes: int = 64 << 10

    def refuse_member(self, name: str, ext: str, size: int) -> tuple[str, str] | None:
        """(reason, ledger value) when a member of `size` bytes must not be read, else None."""
        if ext.lower() == "txt" and size > self.max_caption_bytes:
            return "caption_too_long", f"{name}: {size} bytes > max_caption_bytes {self.max_caption_bytes}"
        if size > self.max_member_bytes:
            return "member_too_large", f"{name}: {size} bytes > max_member_bytes {self.max_member_bytes}"
        return None

    def check(self, verdict: Verdict) -> Verdict:
        """Reject the rows of a read batch whose image or caption is over its cap (columnar)."""
        table = verdict.table
        for column, cap, reason, setting in (("image", self.max_member_bytes, "image_too_large", "max_member_bytes"),
                                             ("text", self.max_caption_bytes, "caption_too_long", "max_caption_bytes")):
            if column not in table.column_names or pa.types.is_null(table.schema.field(column).type):
                continue
            sizes = pc.binary_length(table.column(column))
            over = pc.greater(sizes, cap)
            if pc.any(over).as_py():
                values = pc.binary_join_element_wise(pc.cast(sizes, pa.string()), f" bytes > {setting} {cap}", "")
                verdict.reject_where(over, reason, values)
        return verdict


@dataclass(frozen=True)
class InputTask:
    """One unit of input: a Parquet row group, a tar, or a folder of files."""

    index: int
    kind: str  # "parquet" | "tar" | "files" | "url_list"
    path: str
    row_group: int = 0
    rows: int | None = None  # known up front for Parquet
    limit: int | None = None  # read only the task's first `limit` samples (`curate run --limit`)

    def describe(self) -> str:
        return f"{self.path} (row group {self.row_group})" if self.kind == "parquet" else self.path


def plan_inputs(paths: str | list[str]) -> list[InputTask]:
    """Expand input paths, URLs and patterns into tasks, checking every file can be opened before work starts."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise InputError("no input given: set 'input' in the pipeline or pass --input")
    found = [item for raw in paths for name in expand(raw) for item in _expand(name)]
    parquets = [path for kind, path in found if kind == "parquet"]
    if any(is_url(path) for path in parquets):
        with ThreadPoolExecutor(min(METADATA_THREADS, len(parquets))) as pool:
            metadata = dict(zip(parquets, pool.map(_parquet_metadata, parquets)))
    else:  # a local footer is read in microseconds: no threads to start
        metadata = {path: _parquet_metadata(path) for path in parquets}
    tasks: list[InputTask] = []
    for kind, path in found:
        if kind == "parquet":
            meta = metadata[path]
            for rg in range(meta.num_row_groups):
                tasks.append(InputTask(len(tasks), kind, path, rg, meta.row_group(rg).num_rows))
        else:
            tasks.append(InputTask(len(tasks), kind, path))
    if not tasks:
        raise InputError(f"no Parquet files, tars or image folders found under {paths}")
    return tasks


def _parquet_metadata(path: str) -> pq.FileMetaData:
    try:
        with readable(path) as source:
            meta = pq.ParquetFile(source).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file (half-written?): {exc}") from exc
    names = set(meta.schema.names)
    if not ({"text", "caption"} & names and {"image", "jpg", "png", "webp", "url"} & names):
        raise InputError(f"{path}: missing column(s): an input needs {INPUT_NEEDS}, found {sorted(names)}")
    return meta


def _expand(raw: str) -> list[tuple[str, str]]:
    """(kind, path) of each input a file or folder holds."""
    path = raw if is_url(raw) else str(Path(raw))
    if not is_folder(path):
        suffix = os.path.splitext(path)[1]
        if suffix == ".parquet":
            return [("parquet", path)]
        if suffix == ".tar":
            return [("tar", path)]
        if suffix in URL_LIST_SUFFIXES:
            return [("url_list", path)]
        raise InputError(f"{path}: expected a .parquet file, a .tar WebDataset shard, a URL list "
                         f"({', '.join(URL_LIST_SUFFIXES)}) or a folder")
    by_suffix: dict[str, list[str]] = {}
    for file in files_under(path):
        by_suffix.setdefault(os.path.splitext(file)[1], []).append(file)
    tars = _sorted(by_suffix.get(".tar", []))
    if tars:  # img2dataset's webdataset output also has per-shard .parquet metadata: the tars hold the samples
        return [("tar", p) for p in tars]
    parquets = _sorted(f for f in by_suffix.get(".parquet", []) if not f.rpartition("/")[2].startswith((".", "_")))
    if parquets:
        return [("parquet", p) for p in parquets]
    folders = _sorted({f.rpartition("/")[0] for ext in IMAGE_EXTENSIONS for f in by_suffix.get(f".{ext}", [])})
    if folders:
        return [("files", p) for p in folders]
    return [("url_list", p) for p in _sorted(f for ext in URL_LIST_SUFFIXES for f in by_suffix.get(ext, []))]


def _sorted(paths) -> list[str]:
    """Paths in pathlib's order (part by part), for local paths and URLs alike."""
    return sorted(paths, key=lambda p: p.split("/"))


def read_task(task: InputTask, batch_size: int, limits: ReadLimits = ReadLimits()) -> Iterator[Verdict]:
    """Batches of the task's samples in the core schema, with read failures and values over
    `limits` as rejections; only the first `task.limit` samples when the task has a limit."""
    left = task.limit
    for verdict in _read_task(task, batch_size, limits):
        if left is not None:
            verdict = Verdict(verdict.table.slice(0, left), verdict.reasons[:left], verdict.values[:left])
            left -= verdict.table.num_rows
        yield limits.check(verdict)
        if left == 0:
            return


def _read_task(task: InputTask, batch_size: int, limits: ReadLimits) -> Iterator[Verdict]:
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
    samples = _tar_samples(task.path, limits) if task.kind == "tar" else _folder_samples(task.path, limits)
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

    suffix = os.path.splitext(task.path)[1]
    try:
        if suffix in (".csv", ".tsv"):
            options = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            with readable(task.path) as source:
                header = pcsv.open_csv(source, parse_options=options).schema.names
            # every column as text: a caption of digits must stay a caption
            strings = pcsv.ConvertOptions(column_types={name: pa.string() for name in header})
            with readable(task.path) as source:
                return pcsv.read_csv(source, parse_options=options, convert_options=strings)
        with readable(task.path) as source:
            return pjson.read_json(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{task.path}: not a readable URL list: {exc}") from exc


def _parquet_file(path: str) -> pq.ParquetFile:
    """An open Parquet file, kept while its row groups are read one task after another."""
    return _open_parquet(path, os.getpid())


@lru_cache(maxsize=8)
def _open_parquet(path: str, pid: int) -> pq.ParquetFile:
    """Keyed by process too: a URL's open file does not survive a fork into a worker."""
    return pq.ParquetFile(path if not is_url(path) else open_input(path))


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


def _tar_samples(path: str, limits: ReadLimits) -> Iterator[dict]:
    """Samples of a WebDataset tar, grouped by key; a tar cut off mid-sample ends with that
    sample flagged `truncated_shard` instead of an exception (webdataset would drop it). A member
    over `limits` (its header gives the size) is skipped unread and flags its sample."""
    key, files, refused = None, {}, (None, None)
    try:
        with open_input(path) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or "." not in Path(member.name).name:
                    continue
                stem, ext = _split_key(member.name)
                if key is not None and stem != key:
                    yield _sample(key, files, *refused)
                    files, refused = {}, (None, None)
                key = stem
                too_big = limits.refuse_member(member.name, ext, member.size)
                if too_big is not None:  # the next member's header is found without reading this one's bytes
                    refused = refused if refused[0] else too_big
                    continue
                files[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.ReadError, EOFError, OSError) as exc:
        if key is None:
            raise InputError(f"{path}: not a readable tar (compressed or corrupt?): {exc}") from exc
        yield _sample(key, files, *(refused if refused[0] else ("truncated_shard", f"{path}: {exc}")))
        return
    if key is not None:
        yield _sample(key, files, *refused)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset naming: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _folder_samples(folder: str, limits: ReadLimits) -> Iterator[dict]:
    """Samples of an img2dataset `files` folder: {key}.jpg beside {key}.txt and {key}.json; a file
    over `limits` is not read and flags its sample."""
    paths = [p for p in files_in(folder) if "." in p.rpartition("/")[2]]
    groups: dict[str, dict[str, bytes]] = {}
    refused: dict[str, tuple[str, str]] = {}
    readable_paths = []
    for path, size in zip(paths, file_sizes(paths)):
        stem, ext = _split_key(path.rpartition("/")[2])
        groups.setdefault(stem, {})
        too_big = limits.refuse_member(path, ext, size)
        if too_big is None:
            readable_paths.append(path)
        else:
            refused.setdefault(stem, too_big)
    for path, data in zip(readable_paths, read_files(readable_paths)):
        stem, ext = _split_key(path.rpartition("/")[2])
        groups[stem][ext.lower()] = data
    for key, files in groups.items():
        yield _sample(key, files, *refused.get(key, (None, None)))
