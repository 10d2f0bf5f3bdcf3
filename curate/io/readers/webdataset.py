"""Inputs whose samples are files grouped by key: WebDataset tars and img2dataset `files` folders.

{key}.jpg (or another image extension), {key}.txt and {key}.json make one sample. A sample that
cannot be read whole (a tar cut off mid-member, a member over the limits, a bad .txt or .json)
is still counted: it comes back as a failure, so it reaches the ledger. A sample's `.json` fields
become columns, typed as the json has them.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.io.paths import file_sizes, files_in, open_input, read_files
from curate.io.readers.contract import InputError, InputTask, Occurrences, ReadBatch, ReadLimits
from curate.schema import normalize, numbered_uid

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
# .json fields that are the sample's core values (its caption is the .txt when it has one), not more columns
JSON_CORE = ("uid", "url", "text", "caption", "image")


def read_samples(task: InputTask, batch_size: int, limits: ReadLimits, occurrences: Occurrences) -> Iterator[ReadBatch]:
    """A tar's or folder's samples in batches of `batch_size`, in the core schema."""
    batch: list[dict] = []
    start = 0
    for sample in task_samples(task, limits):
        batch.append(sample)
        if len(batch) == batch_size:
            yield _samples_batch(batch, task, occurrences.of(start, _sources(batch)))
            start += len(batch)
            batch = []
    if batch:
        yield _samples_batch(batch, task, occurrences.of(start, _sources(batch)))


def task_samples(task: InputTask, limits: ReadLimits, only: tuple[str, ...] | None = None) -> Iterator[dict]:
    """The samples of a tar or files-folder task as dicts (uid, source, url, text, image, meta, error,
    error_value); `only`: the member extensions to load (the rest are skipped unread)."""
    return _tar_samples(task.path, limits, only) if task.kind == "tar" else _folder_samples(task.path, limits, only)


def _sources(samples: list[dict]) -> list[tuple | None]:
    """What each sample's uid is made of (url, else its key, and text), or None where its .json gives one."""
    return [None if s["uid"] is not None else s["source"] for s in samples]


def _samples_batch(samples: list[dict], task: InputTask, occurrences: np.ndarray) -> ReadBatch:
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
    return ReadBatch.of_rows(table, [s["error"] for s in samples], [s["error_value"] for s in samples])


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
