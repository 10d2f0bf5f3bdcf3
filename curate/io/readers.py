"""Readers: Parquet files, WebDataset tars and img2dataset output folders, cut into tasks.

A task is the unit of work and of resume: one Parquet row group, one tar, or one
img2dataset `files` subfolder. Reading a task yields `Verdict`s in the core schema, so a
sample that cannot be read whole (a tar cut off mid-member, a corrupt row group when
`on_unreadable: ledger`) still reaches the ledger: every sample key a reader sees is counted.
A sample's `.json` fields become columns (typed as the json has them), and a Parquet `image`
column may hold file paths or Hugging Face `datasets`' Image structs instead of bytes.
Inputs are local paths or URLs (s3://, gs://, hf://, ...; see curate.io.paths), with globs
and brace ranges (`s3://bucket/shards/{00000..00099}.tar`).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.paths import (
    StorageError,
    expand,
    file_sizes,
    files_in,
    files_under,
    is_folder,
    is_url,
    open_input,
    read_files,
    readable,
)
from curate.schema import INPUT_NEEDS, count_occurrences, make_uid, normalize, numbered_uid
from curate.stage import Verdict

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
URL_LIST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
# img2dataset's parquet output names the image column after its format and the text "caption"
COLUMN_ALIASES = {"caption": "text", "jpg": "image", "png": "image", "webp": "image"}
READ_STAGE = "read"
UID_MEMBERS = ("txt", "json")  # the members a tar's or folder's made uids are made of
METADATA_THREADS = 16  # Parquet footers on object storage read at once while planning (each a round trip)

InputError = StorageError  # an input path or URL cannot be read; the message names it and says what was expected


@dataclass(frozen=True)
class ReadLimits:
    """What the readers do not load, and what they do with what they cannot read.

    Sizes above which a value is not loaded: its sample goes to the ledger instead
    (`member_too_large`: a tar member or image file, `image_too_large`: a Parquet image cell,
    `caption_too_long`: a caption, in UTF-8 bytes). A tar member's size is in its header, so an
    oversized member is skipped unread; a Parquet row group is read whole, then its oversized
    cells are rejected before any stage sees them. `on_unreadable`: a Parquet row group that
    cannot be read (a corrupt page) fails its task naming the file and row group ("fail"), or
    sends its rows, counted from the file's metadata, to the ledger as `unreadable_row_group`
    ("ledger")."""

    max_member_bytes: int = 64 << 20
    max_caption_bytes: int = 64 << 10
    on_unreadable: str = "fail"

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


# The input's own uids (a Parquet's or URL list's uid column, read alone) for the check that none
# is empty and none given twice (curate.engines.uniqueness runs it on the engine before any stage).

def gives_uids(task: InputTask) -> bool:
    """Whether the task's input has its own uid column (a Parquet's or a URL list's)."""
    if task.kind == "parquet":
        return "uid" in _parquet_file(task.path).schema_arrow.names
    return task.kind == "url_list"


def task_uids(task: InputTask, limits: ReadLimits) -> pa.Array | None:
    """The task's own uids as strings (its first `limit` when it has a limit), or None where it gives
    none: no uid column, an all-null one (curate makes them), or a row group that cannot be read
    while `on_unreadable: ledger` (its rows go to the ledger when the run reads it)."""
    if task.kind == "parquet":
        file = _parquet_file(task.path)
        try:
            column = file.read_row_group(task.row_group, columns=["uid"]).column(0)
        except (OSError, pa.ArrowException) as exc:
            if limits.on_unreadable == "ledger":
                return None
            raise InputError(f"{task.path}: row group {task.row_group} of {file.metadata.num_row_groups}: "
                             f"unreadable uid column ({error_text(exc)}); set "
                             "on_unreadable: ledger to send its rows to the ledger as unreadable_row_group and "
                             "go on") from exc
    else:
        table = _url_list(task)
        if "uid" not in table.column_names:
            return None
        column = table.column("uid")
    column = column.slice(0, task.limit) if task.limit is not None else column
    if column.null_count == len(column):
        return None
    try:
        return pc.cast(column.combine_chunks(), pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"{task.describe()}: column 'uid' has type {column.type}, expected text") from exc


def task_made_uids(task: InputTask, limits: ReadLimits) -> tuple[np.ndarray, pa.Array]:
    """The positions in the task (its first `limit`) of the samples whose uid curate makes, and the
    uid each would get as the first sample of its (url, text) pair, for the run's count of repeats
    over the whole input (curate.engines.occurrences). Reads only what the uids are made of: a
    Parquet's url and caption columns (none when its uid column gives uids), a tar's or folder's
    .txt and .json members (its images are skipped unread)."""
    if task.kind in ("parquet", "url_list"):
        table = _uid_sources(task, limits)
        if table is None:
            return np.zeros(0, np.int64), pa.array([], pa.string())
        table = table.slice(0, task.limit) if task.limit is not None else table
        urls = table.column("url").to_pylist() if "url" in table.column_names else [None] * table.num_rows
        uids = [make_uid(url, text) for url, text in zip(urls, table.column("text").to_pylist())]
        return np.arange(len(uids), dtype=np.int64), pa.array(uids, pa.string())
    samples = _tar_samples(task.path, limits, UID_MEMBERS) if task.kind == "tar" else _folder_samples(
        task.path, limits, UID_MEMBERS)
    positions, uids = [], []
    for position, sample in enumerate(samples):
        if task.limit is not None and position >= task.limit:
            break
        if sample["uid"] is None:
            positions.append(position)
            uids.append(make_uid(*sample["source"]))
    return np.array(positions, np.int64), pa.array(uids, pa.string())


def _uid_sources(task: InputTask, limits: ReadLimits) -> pa.Table | None:
    """A Parquet row group's or URL list's url and text columns (as the readers name them), or None
    where its uid column gives uids, or its row group cannot be read while `on_unreadable: ledger`."""
    if task.kind == "url_list":
        table = _url_list(task)
        table = table.rename_columns([_alias(c, table.column_names) for c in table.column_names])
        gives = "uid" in table.column_names and table.column("uid").null_count < table.num_rows
        if gives or "text" not in table.column_names:  # without a caption the read fails, naming the file
            return None
        return table.select([c for c in ("url", "text") if c in table.column_names])
    file = _parquet_file(task.path)
    names = file.schema_arrow.names
    if "uid" in names and not _null_uids(file, task.row_group):
        return None
    columns = [c for c in ("url", "text" if "text" in names else "caption") if c in names]
    try:
        table = file.read_row_group(task.row_group, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        if limits.on_unreadable == "ledger":
            return None
        raise InputError(f"{task.path}: row group {task.row_group} of {file.metadata.num_row_groups}: "
                         f"unreadable url or caption column ({error_text(exc)}); set on_unreadable: ledger to "
                         "send its rows to the ledger as unreadable_row_group and go on") from exc
    return table.rename_columns(["text" if c == "caption" else c for c in table.column_names])


def _null_uids(file: pq.ParquetFile, row_group: int) -> bool:
    """Whether a row group's uid column is all null (curate makes its uids): from the footer's
    statistics where the writer stored a null count, else by reading the column."""
    meta = file.metadata.row_group(row_group)
    index = next(i for i in range(meta.num_columns) if meta.column(i).path_in_schema == "uid")
    stats = meta.column(index).statistics
    if stats is not None and stats.has_null_count:
        return stats.null_count == meta.num_rows
    try:
        return file.read_row_group(row_group, columns=["uid"]).column(0).null_count == meta.num_rows
    except (OSError, pa.ArrowException):
        return False  # its rows reach the ledger with place uids, or the read fails naming the row group


def uid_problem(task: InputTask, uids: pa.Array) -> str | None:
    """The first null or empty uid of a column that gives some, as a one-line message; else None."""
    missing = pc.fill_null(pc.equal(pc.utf8_length(uids), 0), True)
    if not pc.any(missing).as_py():
        return None
    row = int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0])
    what = "null" if uids[row].as_py() is None else "empty"
    count = pc.sum(missing).as_py()
    return (f"{where(task, row)}: {what} uid ({count} row(s) of this part have a null or empty uid): "
            "every row needs a uid, or drop the uid column to have curate make them")


def where(task: InputTask, row: int) -> str:
    """A row's place as a user finds it: the file, its row group for a Parquet, the row within."""
    return f"{task.describe()} row {row}"


def _parquet_metadata(path: str) -> pq.FileMetaData:
    try:
        with readable(path) as source:
            meta = pq.ParquetFile(source).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file (half-written?): {exc}") from exc
    names = set(meta.schema.to_arrow_schema().names)  # top-level columns (the Parquet schema's names are its leaves)
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
    folders = _sorted({f.rpartition("/")[0] for ext in IMAGE_EXTENSIONS for f in by_suffix.get(f".{ext}", [])})
    # img2dataset's `files` format writes NNNNN.parquet beside each folder NNNNN of samples: that
    # folder's metadata (its samples' .json hold the same fields), not samples
    samples = set(folders)
    parquets = _sorted(f for f in by_suffix.get(".parquet", [])
                       if not f.rpartition("/")[2].startswith((".", "_")) and f[: -len(".parquet")] not in samples)
    if parquets:
        return [("parquet", p) for p in parquets]
    if folders:
        return [("files", p) for p in folders]
    return [("url_list", p) for p in _sorted(f for ext in URL_LIST_SUFFIXES for f in by_suffix.get(ext, []))]


def _sorted(paths) -> list[str]:
    """Paths in pathlib's order (part by part), for local paths and URLs alike."""
    return sorted(paths, key=lambda p: p.split("/"))


def read_task(task: InputTask, batch_size: int, limits: ReadLimits = ReadLimits(),
              repeats: pa.Table | None = None) -> Iterator[Verdict]:
    """Batches of the task's samples in the core schema, with read failures and values over
    `limits` as rejections; only the first `task.limit` samples when the task has a limit.

    A uid curate makes is `numbered_uid` of the sample's url and text and its occurrence number:
    `repeats` (columns position, occurrence; sorted by position) numbers the task's samples that
    repeat an earlier sample's pair anywhere in the input, as a run counts them
    (curate.engines.occurrences); every other made uid is a first occurrence. Without it (a read
    outside a run), repeats are counted within the task."""
    left = task.limit
    for verdict in _read_task(task, batch_size, limits, _Occurrences(repeats)):
        if left is not None:
            verdict = Verdict(verdict.table.slice(0, left), verdict.reasons[:left], verdict.values[:left])
            left -= verdict.table.num_rows
        yield limits.check(verdict)
        if left == 0:
            return


class _Occurrences:
    """The occurrence numbers of a task's samples whose uid curate makes, by position in the task:
    the run's (`repeats`), else counted within the task as it is read."""

    def __init__(self, repeats: pa.Table | None):
        self.repeats, self.seen = repeats, {}
        if repeats is not None:
            self.positions, self.numbers = (repeats.column(c).to_numpy() for c in ("position", "occurrence"))

    def of(self, start: int, pairs: list[tuple | None]) -> np.ndarray:
        """The numbers of the samples at positions `start`.. with these (url, text) pairs (None: a
        sample whose uid is given)."""
        if self.repeats is None:
            return count_occurrences(pairs, self.seen)
        numbers = np.ones(len(pairs), np.int64)
        lo, hi = np.searchsorted(self.positions, [start, start + len(pairs)])
        numbers[self.positions[lo:hi] - start] = self.numbers[lo:hi]
        return numbers

    def within(self, rows: int) -> np.ndarray | None:
        """The numbers of a whole task of `rows` rows read as one table (None: normalize counts them)."""
        return None if self.repeats is None else self.of(0, [None] * rows)


def _read_task(task: InputTask, batch_size: int, limits: ReadLimits, occurrences: _Occurrences) -> Iterator[Verdict]:
    if task.kind in ("parquet", "url_list"):
        whole = (_row_group(task, limits, occurrences) if task.kind == "parquet" else
                 _table_verdict(_url_list(task), task, limits, occurrences))
        for start in range(0, max(whole.table.num_rows, 1), batch_size):  # an empty task still yields its schema
            end = start + batch_size
            yield Verdict(whole.table.slice(start, batch_size), whole.reasons[start:end], whole.values[start:end])
        return
    samples = _tar_samples(task.path, limits) if task.kind == "tar" else _folder_samples(task.path, limits)
    batch: list[dict] = []
    start = 0
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield _samples_to_verdict(batch, task, occurrences.of(start, _sources(batch)))
            start += len(batch)
            batch = []
    if batch:
        yield _samples_to_verdict(batch, task, occurrences.of(start, _sources(batch)))


def _sources(samples: list[dict]) -> list[tuple | None]:
    """What each sample's uid is made of (url, else its key, and text), or None where its .json gives one."""
    return [None if s["uid"] is not None else s["source"] for s in samples]


def _row_group(task: InputTask, limits: ReadLimits, occurrences: _Occurrences) -> Verdict:
    """A Parquet task's rows; an unreadable row group fails naming the file and row group, or with
    `on_unreadable: ledger` comes back as rejections, one per row the file's metadata counts."""
    file = _parquet_file(task.path)
    try:
        table = file.read_row_group(task.row_group)
    except (OSError, pa.ArrowException) as exc:
        where = f"{task.path}: row group {task.row_group} of {file.metadata.num_row_groups}"
        if limits.on_unreadable != "ledger":
            raise InputError(f"{where}: unreadable ({error_text(exc)}); set "
                             "on_unreadable: ledger to send its rows to the ledger as unreadable_row_group "
                             "and go on") from exc
        return _unreadable_rows(file, task, f"{where}: {error_text(exc, 200)}", occurrences)
    return _table_verdict(table, task, limits, occurrences)


def error_text(exc: BaseException, limit: int = 300) -> str:
    """An exception as one printable line of at most `limit` characters (a reader's message may
    hold newlines and the garbage bytes it met)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(exc)).split())
    return f"{type(exc).__name__}: {text[:limit]}"


def _unreadable_rows(file: pq.ParquetFile, task: InputTask, error: str, occurrences: _Occurrences) -> Verdict:
    """Every row of an unreadable row group, rejected as `unreadable_row_group`: with the uids the
    file gives (its uid column, or its url and caption when it has none) where those columns still
    read, else uids naming the row's place (`FILE#ROW_GROUP:ROW`)."""
    rows = file.metadata.row_group(task.row_group).num_rows
    names = set(file.schema_arrow.names)
    read: dict[str, pa.ChunkedArray] = {}
    for name in sorted({"uid", "url", "text", "caption"} & names):
        try:
            read[name] = file.read_row_group(task.row_group, columns=[name]).column(0)
        except (OSError, pa.ArrowException):
            continue
    text = read.get("text", read.get("caption"))
    own = "uid" in read or ("uid" not in names and text is not None and ("url" in read or "url" not in names))
    columns = {"url": read.get("url", pa.nulls(rows, pa.string())), "text": text if text is not None else
               pa.nulls(rows, pa.string()), "image": pa.nulls(rows, pa.binary())}
    if "uid" in read:
        columns["uid"] = read["uid"]
    elif not own:
        columns["uid"] = pc.binary_join_element_wise(f"{task.path}#{task.row_group}:",
                                                     pc.cast(pa.array(range(rows)), pa.string()), "")
    table = normalize(pa.table(columns), task.describe(), occurrences.within(rows))
    return Verdict(table, ["unreadable_row_group"] * rows, [error] * rows)


def _table_verdict(table: pa.Table, task: InputTask, limits: ReadLimits, occurrences: _Occurrences) -> Verdict:
    """A Parquet row group or URL list in the core schema: img2dataset's column names aliased, an
    `image` column of paths or Hugging Face Image structs read into bytes."""
    table = table.rename_columns([_alias(c, table.column_names) for c in table.column_names])
    reasons = values = None
    if "image" in table.column_names and not _is_bytes(table.schema.field("image").type):
        table, reasons, values = _image_files(table, task, limits)
    try:
        table = normalize(table, task.describe(), occurrences.within(table.num_rows))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return Verdict(table, reasons, values)


def _is_bytes(type_: pa.DataType) -> bool:
    return pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_null(type_)


_URL_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _image_files(table: pa.Table, task: InputTask, limits: ReadLimits) -> tuple[pa.Table, list, list]:
    """The table with its `image` column as bytes, and the read's reasons and values, for a column of
    file paths (strings: relative ones from the input file's folder, absolute ones and URLs as they
    are) or of Hugging Face `datasets`' Image structs {bytes, path} (the bytes, else the file at the
    path). A file that is missing or over `max_member_bytes` is rejected at read (`image_file_missing`,
    `member_too_large`); the paths are kept as column `image_path`."""
    column = table.column("image").combine_chunks()
    type_ = column.type
    if pa.types.is_struct(type_) and type_.get_field_index("bytes") >= 0:
        data = pc.cast(pc.struct_field(column, "bytes"), pa.binary())
        given = pc.struct_field(column, "path") if type_.get_field_index("path") >= 0 else pa.nulls(len(column),
                                                                                                   pa.string())
    elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
        data, given = pa.nulls(len(column), pa.binary()), column
    else:
        raise InputError(f"{task.describe()}: column 'image' has type {type_}; expected encoded image bytes (binary), "
                         "image file paths (string) or Hugging Face datasets' Image struct {bytes, path}")
    given = pc.cast(given, pa.string())
    folder = task.path.rpartition("/")[0] or "."
    absolute = pc.or_(pc.starts_with(given, "/"), pc.match_substring_regex(given, _URL_PATH.pattern))
    paths = pc.if_else(absolute, given, pc.binary_join_element_wise(folder, given, "/"))
    wanted = np.flatnonzero(pc.and_(pc.is_null(data), pc.is_valid(paths)).to_numpy(zero_copy_only=False))
    reasons, values = [None] * len(column), [None] * len(column)
    found: dict[int, bytes] = {}
    to_read: dict[str, list[tuple[int, str]]] = {}  # by file system, to read each one's files together
    for row, path in zip(wanted.tolist(), paths.take(pa.array(wanted, pa.int64())).to_pylist()):
        size = _size_or_none(path)
        refused = None if size is None else limits.refuse_member(path, path.rpartition(".")[2], size)
        if size is None:
            reasons[row], values[row] = "image_file_missing", f"{path}: no such file"
        elif refused is not None:
            reasons[row], values[row] = refused
        else:
            to_read.setdefault(path.partition("://")[0] if is_url(path) else "", []).append((row, path))
    for group in to_read.values():
        found.update(zip((row for row, _ in group), read_files([path for _, path in group])))
    if found:
        rows = sorted(found)
        mask = np.zeros(len(column), bool)
        mask[rows] = True
        data = pc.replace_with_mask(data, pa.array(mask), pa.array([found[row] for row in rows], pa.binary()))
    table = table.set_column(table.column_names.index("image"), "image", data)
    if given.null_count < len(given) and "image_path" not in table.column_names:
        table = table.append_column("image_path", given)
    return table, reasons, values


def _size_or_none(path: str) -> int | None:
    """A file's size, or None when there is no file at `path`."""
    try:
        return file_sizes([path])[0]
    except FileNotFoundError:
        return None
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise


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
    """Keyed by process too: a URL's open file does not survive a fork into a worker. Page checksums,
    where the writer stored them, are verified: a corrupt page is an error, not wrong values."""
    return pq.ParquetFile(path if not is_url(path) else open_input(path), page_checksum_verification=True)


def _alias(column: str, columns: list[str]) -> str:
    target = COLUMN_ALIASES.get(column)
    return target if target and target not in columns else column


def _samples_to_verdict(samples: list[dict], task: InputTask, occurrences: np.ndarray) -> Verdict:
    """Tar or folder samples as a table in the core schema; a uid the .json does not give is made
    from the sample's url (else key) and text and its occurrence number."""
    uids = [s["uid"] if s["uid"] is not None else numbered_uid(*s["source"], int(k))
            for s, k in zip(samples, occurrences)]
    table = pa.table(
        {
            "uid": pa.array(uids, pa.string()),
            "url": pa.array([s["url"] for s in samples], pa.string()),
            "text": pa.array([s["text"] for s in samples], pa.string()),
            "image": pa.array([s["image"] for s in samples], pa.binary()),
        }
    )
    for name, column in json_columns([s["meta"] for s in samples]).items():
        table = table.append_column(name, column)
    try:
        table = normalize(table, task.describe())
    except ValueError as exc:
        raise InputError(f"{exc} (from the samples' .json)") from exc
    return Verdict(table, [s["error"] for s in samples], [s["error_value"] for s in samples])


# .json fields that are the sample's core values (its caption is the .txt when it has one), not more columns
JSON_CORE = ("uid", "url", "text", "caption", "image")


def json_columns(metas: list[dict]) -> dict[str, pa.Array]:
    """The samples' .json fields as columns, typed as the json has them (numbers as int64 or double,
    strings, booleans, lists, objects as structs; a field a sample lacks is null there). A field
    whose values no one Arrow type holds (a number in one sample, text in another) is kept as
    each value's JSON text; an integer past int64 as uint64."""
    columns = {}
    for name in dict.fromkeys(name for meta in metas for name in meta):  # every sample's fields, in order met
        values = [meta.get(name) for meta in metas]
        column = _json_column(values)  # a field at a time: 8x faster than inferring one struct of them all
        columns[name] = column if _parquet_writable(column.type) else _json_text(values)
    return columns


def _json_column(values: list) -> pa.Array:
    """One field's values as Arrow infers them, else as uint64, else as JSON text."""
    for type_ in (None, pa.uint64()):
        try:
            return pa.array(values, type_)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            continue
    return _json_text(values)


def _json_text(values: list) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())


def _parquet_writable(type_: pa.DataType) -> bool:
    """False for types Parquet cannot store: a struct without fields (an empty json object), at any depth."""
    if pa.types.is_struct(type_):
        return type_.num_fields > 0 and all(_parquet_writable(type_.field(i).type) for i in range(type_.num_fields))
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return _parquet_writable(type_.value_type)
    return True


def _sample(key: str, files: dict[str, bytes], error: str | None = None, error_value: str | None = None) -> dict:
    meta = {}
    if "json" in files:
        try:
            meta = json.loads(files["json"])
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            meta = {}
            error, error_value = (error, error_value) if error else ("bad_metadata", f"{key}.json is not a JSON object")
    if "txt" in files:
        try:
            text = files["txt"].decode("utf-8")
        except UnicodeDecodeError as exc:
            text = files["txt"].decode("utf-8", errors="replace")
            bad = files["txt"][exc.start : exc.start + 4].hex()
            error, error_value = (error, error_value) if error else (
                "invalid_utf8", f"{key}.txt: invalid UTF-8 at byte {exc.start} ({bad}...)")
    else:
        text = meta.get("caption", meta.get("text"))
    image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
    url = meta.get("url")
    uid = str(meta["uid"]) if meta.get("uid") else None  # else made from source, numbered per occurrence
    extra = {name: value for name, value in meta.items() if name not in JSON_CORE}
    return {"uid": uid, "source": (url or key, text), "url": url, "text": text, "image": image, "meta": extra,
            "error": error, "error_value": error_value}


def _tar_samples(path: str, limits: ReadLimits, only: tuple[str, ...] | None = None) -> Iterator[dict]:
    """Samples of a WebDataset tar, grouped by key; a tar cut off mid-sample ends with that
    sample flagged `truncated_shard` instead of an exception (webdataset would drop it). A member
    over `limits` (its header gives the size) is skipped unread and flags its sample, as does a
    member that is a link or a device (`unsupported_member`): webdataset skips those, and a sample
    made only of them would vanish. `only`: the member extensions to load (the rest are skipped
    unread; their samples are still counted)."""
    key, files, refused = None, {}, (None, None)
    try:
        with open_input(path) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                if member.isdir() or "." not in Path(member.name).name:
                    continue
                stem, ext = _split_key(member.name)
                if key is not None and stem != key:
                    yield _sample(key, files, *refused)
                    files, refused = {}, (None, None)
                key = stem
                if not member.isfile():  # a link or device is not read, but its sample is counted
                    refused = refused if refused[0] else ("unsupported_member", _not_a_file(member))
                    continue
                too_big = limits.refuse_member(member.name, ext, member.size)
                if too_big is not None:  # the next member's header is found without reading this one's bytes
                    refused = refused if refused[0] else too_big
                    continue
                if only is None or ext.lower() in only:
                    files[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.ReadError, EOFError, OSError) as exc:
        if key is None:
            raise InputError(f"{path}: not a readable tar (compressed or corrupt?): {exc}") from exc
        yield _sample(key, files, *(refused if refused[0] else ("truncated_shard", f"{path}: {exc}")))
        return
    if key is not None:
        yield _sample(key, files, *refused)


def _not_a_file(member: tarfile.TarInfo) -> str:
    """The ledger value of a tar member that is not a regular file."""
    if member.issym():
        kind = f"a symbolic link to {member.linkname}"
    elif member.islnk():
        kind = f"a hard link to {member.linkname}"
    else:
        kind = "a device, fifo or other special file"
    return f"{member.name}: {kind}; only regular files are read"


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset naming: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _folder_samples(folder: str, limits: ReadLimits, only: tuple[str, ...] | None = None) -> Iterator[dict]:
    """Samples of an img2dataset `files` folder: {key}.jpg beside {key}.txt and {key}.json; a file
    over `limits` is not read and flags its sample; `only`: the extensions to read."""
    paths = [p for p in files_in(folder) if "." in p.rpartition("/")[2]]
    groups: dict[str, dict[str, bytes]] = {}
    refused: dict[str, tuple[str, str]] = {}
    readable_paths = []
    for path, size in zip(paths, file_sizes(paths)):
        stem, ext = _split_key(path.rpartition("/")[2])
        groups.setdefault(stem, {})
        too_big = limits.refuse_member(path, ext, size)
        if too_big is None:
            if only is None or ext.lower() in only:
                readable_paths.append(path)
        else:
            refused.setdefault(stem, too_big)
    for path, data in zip(readable_paths, read_files(readable_paths)):
        stem, ext = _split_key(path.rpartition("/")[2])
        groups[stem][ext.lower()] = data
    for key, files in groups.items():
        yield _sample(key, files, *refused.get(key, (None, None)))
