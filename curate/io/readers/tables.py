"""Inputs a task reads as one Arrow table: a Parquet row group, a URL list (CSV/TSV, JSON lines).

img2dataset's column names are aliased to the core schema's, and a Parquet `image` column may
hold file paths or Hugging Face `datasets`' Image structs instead of bytes (the files are read).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.paths import StorageError, file_sizes, is_url, open_input, read_files, readable
from curate.io.readers.contract import InputError, InputTask, Occurrences, ReadBatch, ReadLimits, error_text
from curate.schema import normalize

# img2dataset's parquet output names the image column after its format and the text "caption"
COLUMN_ALIASES = {"caption": "text", "jpg": "image", "png": "image", "webp": "image"}
_URL_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def read_row_group(task: InputTask, limits: ReadLimits, occurrences: Occurrences) -> ReadBatch:
    """A Parquet task's rows; an unreadable row group fails naming the file and row group, or with
    `on_unreadable: ledger` comes back as failures, one per row the file's metadata counts."""
    file = parquet_file(task.path)
    try:
        table = file.read_row_group(task.row_group)
    except (OSError, pa.ArrowException) as exc:
        where = f"{task.path}: row group {task.row_group} of {file.metadata.num_row_groups}"
        if limits.on_unreadable != "ledger":
            raise InputError(f"{where}: unreadable ({error_text(exc)}); set "
                             "on_unreadable: ledger to send its rows to the ledger as unreadable_row_group "
                             "and go on") from exc
        return _unreadable_rows(file, task, f"{where}: {error_text(exc, 200)}", occurrences)
    return core_table(table, task, limits, occurrences)


def _unreadable_rows(file: pq.ParquetFile, task: InputTask, error: str, occurrences: Occurrences) -> ReadBatch:
    """Every row of an unreadable row group, failing as `unreadable_row_group`: with the uids the
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
    return ReadBatch.of_rows(table, ["unreadable_row_group"] * rows, [error] * rows)


def core_table(table: pa.Table, task: InputTask, limits: ReadLimits, occurrences: Occurrences) -> ReadBatch:
    """A Parquet row group or URL list in the core schema: img2dataset's column names aliased, an
    `image` column of paths or Hugging Face Image structs read into bytes."""
    table = table.rename_columns([alias(c, table.column_names) for c in table.column_names])
    reasons = values = None
    if "image" in table.column_names and not _is_bytes(table.schema.field("image").type):
        table, reasons, values = _image_files(table, task, limits)
    try:
        table = normalize(table, task.describe(), occurrences.within(table.num_rows))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return ReadBatch.of_rows(table, reasons, values)


def _is_bytes(type_: pa.DataType) -> bool:
    return pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_null(type_)


def _image_files(table: pa.Table, task: InputTask, limits: ReadLimits) -> tuple[pa.Table, list, list]:
    """The table with its `image` column as bytes, and the read's reasons and values, for a column of
    file paths (strings: relative ones from the input file's folder, absolute ones and URLs as they
    are) or of Hugging Face `datasets`' Image structs {bytes, path} (the bytes, else the file at the
    path). A file that is missing or over `max_member_bytes` fails at read (`image_file_missing`,
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


def url_list(task: InputTask) -> pa.Table:
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


def parquet_file(path: str) -> pq.ParquetFile:
    """An open Parquet file, kept while its row groups are read one task after another."""
    return _open_parquet(path, os.getpid())


@lru_cache(maxsize=8)
def _open_parquet(path: str, pid: int) -> pq.ParquetFile:
    """Keyed by process too: a URL's open file does not survive a fork into a worker. Page checksums,
    where the writer stored them, are verified: a corrupt page is an error, not wrong values. Only a
    URL's reads are pre-buffered (coalesced into few requests): a pre-buffering reader keeps the last
    row group it read, compressed, for as long as the file stays open here."""
    remote = is_url(path)
    return pq.ParquetFile(open_input(path) if remote else path, page_checksum_verification=True, pre_buffer=remote)


def alias(column: str, columns: list[str]) -> str:
    """The core schema's name for an img2dataset column (caption, jpg, ...) unless the table has that one too."""
    target = COLUMN_ALIASES.get(column)
    return target if target and target not in columns else column
