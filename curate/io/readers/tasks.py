"""The input cut into tasks, and a task read in batches.

A task is the unit of work and of resume: one Parquet row group, one tar, one img2dataset
`files` subfolder or one URL list. Inputs are local paths or URLs (s3://, gs://, hf://, ...; see
curate.io.paths), with globs and brace ranges (`s3://bucket/shards/{00000..00099}.tar`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.paths import expand, files_under, is_folder, is_url, readable
from curate.io.readers.contract import InputError, InputTask, Occurrences, ReadBatch, ReadLimits
from curate.io.readers.tables import core_table, parquet_file, read_row_group, url_list
from curate.io.readers.webdataset import IMAGE_EXTENSIONS, read_samples
from curate.schema import INPUT_NEEDS

URL_LIST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
METADATA_THREADS = 16  # Parquet footers on object storage read at once while planning (each a round trip)
PAIR_COLUMNS = ("uid", "text", "image")  # what a trainer reads of a sample


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


def holds_images(task: InputTask) -> bool:
    """Whether the task's source has an image column (where it has none, the readers' `image` is
    null): tars and image folders do, URL lists do not, a Parquet when it has image/jpg/png/webp."""
    if task.kind == "parquet":
        return bool({"image", "jpg", "png", "webp"} & set(parquet_file(task.path).schema_arrow.names))
    return task.kind != "url_list"


def read_task(task: InputTask, batch_size: int, limits: ReadLimits = ReadLimits(),
              repeats: pa.Table | None = None) -> Iterator[ReadBatch]:
    """Batches of the task's samples in the core schema, with read failures and values over
    `limits` as failures; only the first `task.limit` samples when the task has a limit.

    A uid curate makes is `numbered_uid` of the sample's url and text and its occurrence number:
    `repeats` (columns position, occurrence; sorted by position) numbers the task's samples that
    repeat an earlier sample's pair anywhere in the input, as a run counts them
    (curate.engines.occurrences); every other made uid is a first occurrence. Without it (a read
    outside a run), repeats are counted within the task."""
    left = task.limit
    for batch in _read_task(task, batch_size, limits, Occurrences(repeats)):
        if left is not None:
            batch = batch.slice(0, left)
            left -= batch.table.num_rows
        yield limits.check(batch)
        if left == 0:
            return


def _read_task(task: InputTask, batch_size: int, limits: ReadLimits, occurrences: Occurrences) -> Iterator[ReadBatch]:
    if task.kind not in ("parquet", "url_list"):
        yield from read_samples(task, batch_size, limits, occurrences)
        return
    whole = (read_row_group(task, limits, occurrences) if task.kind == "parquet" else
             core_table(url_list(task), task, limits, occurrences))
    for start in range(0, max(whole.table.num_rows, 1), batch_size):  # an empty task still yields its schema
        yield whole.slice(start, batch_size)


def read_pairs(task: InputTask, batch_size: int) -> Iterator[pa.Table]:
    """uid, text and image of the task's samples a trainer can use (read whole, with image bytes and
    a caption), in the task's order, in batches of at most `batch_size` (none empty)."""
    for batch in read_task(task, batch_size):
        kept = batch.kept()
        has_image = pc.fill_null(pc.greater(pc.binary_length(kept["image"]), 0), False)
        usable = kept.filter(pc.and_(pc.is_valid(kept["text"]), has_image)).select(list(PAIR_COLUMNS))
        if usable.num_rows:
            yield usable
