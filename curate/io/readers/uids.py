"""The input's uids as a run checks and counts them before any stage, read apart from the samples.

The uids an input gives (a Parquet's or URL list's uid column, read alone; the uid a tar's or
folder's .json holds, read from the .json members alone) are checked on the engine, none empty
and none given twice (curate.engines.uniqueness); the uids curate makes are
counted over the whole input, from only what they are made of (curate.engines.occurrences).
"""

from __future__ import annotations

from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.readers.contract import InputError, InputTask, ReadLimits, error_text
from curate.io.readers.tables import alias, parquet_file, url_list
from curate.io.readers.webdataset import task_samples
from curate.schema import make_uid

UID_MEMBERS = ("txt", "json")  # the members a tar's or folder's made uids are made of


def gives_uids(task: InputTask) -> bool:
    """Whether the task's input has its own uid column (a Parquet's or a URL list's)."""
    if task.kind == "parquet":
        return "uid" in parquet_file(task.path).schema_arrow.names
    return task.kind == "url_list"


def may_give_uids(task: InputTask) -> bool:
    """Whether some of the task's samples may give their own uid: a uid column, or a tar's or
    folder's .json members (a "uid" field in any of them)."""
    return gives_uids(task) or task.keyed_samples


def task_uids(task: InputTask, limits: ReadLimits) -> pa.Array | None:
    """The task's own uids as strings (its first `limit` when it has a limit), or None where it gives
    none: no uid column, an all-null one (curate makes them), or a row group that cannot be read
    while `on_unreadable: ledger` (its rows go to the ledger when the run reads it). A tar's or
    folder's are its samples' .json uids, null where a sample gives none (curate makes it)."""
    if task.keyed_samples:
        samples = islice(task_samples(task, limits, ("json",)), task.limit)
        column = pa.chunked_array([pa.array([sample["uid"] for sample in samples], pa.string())])
    elif task.kind == "parquet":
        file = parquet_file(task.path)
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
        table = url_list(task)
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
    positions, uids = [], []
    for position, sample in enumerate(task_samples(task, limits, UID_MEMBERS)):
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
        table = url_list(task)
        table = table.rename_columns([alias(c, table.column_names) for c in table.column_names])
        gives = "uid" in table.column_names and table.column("uid").null_count < table.num_rows
        if gives or "text" not in table.column_names:  # without a caption the read fails, naming the file
            return None
        return table.select([c for c in ("url", "text") if c in table.column_names])
    file = parquet_file(task.path)
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
    """The first null or empty uid of a column that gives some, as a one-line message; else None. A
    tar's or folder's samples may each give one or not (an empty .json uid is none: curate makes it)."""
    if task.keyed_samples:
        return None
    missing = pc.fill_null(pc.equal(pc.utf8_length(uids), 0), True)
    if not pc.any(missing).as_py():
        return None
    row = int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0])
    what = "null" if uids[row].as_py() is None else "empty"
    count = pc.sum(missing).as_py()
    return (f"{where(task, row)}: {what} uid ({count} row(s) of this part have a null or empty uid): "
            "every row needs a uid, or drop the uid column to have curate make them")


def where(task: InputTask, row: int) -> str:
    """A row's place as a user finds it: the file, its row group for a Parquet, the row within (the
    sample's position in a tar or folder)."""
    return f"{task.describe()} {'sample' if task.keyed_samples else 'row'} {row}"
