"""What the training streams read: the shards `curate run` (or img2dataset) wrote, read through
curate.io, or records already in memory (LLaVA-Instruct conversations) cut into shards.

A source is a list of shards and a way to read one of them. Reading yields only the samples a
trainer can use (an image and a caption), in the shard's own order, so a position inside a
shard means the same thing every time it is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import pyarrow as pa

from curate.io.paths import exists, is_folder, is_url
from curate.io.readers.contract import InputError
from curate.io.readers.tasks import holds_images, plan_inputs, read_pairs

READ_BATCH = 64  # samples of a tar turned into a table at a time (a Parquet row group is read whole)


class Pair(NamedTuple):
    """One image-caption sample of a shard."""

    uid: str
    text: str
    image: bytes


def _fingerprint(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


class ShardSource:
    """The shards of a curated output folder (its parquet/ parts, else its shards/ tars), of an
    img2dataset output folder, or of the given Parquet/tar files: a local path or a URL, with
    globs and brace ranges (`s3://bucket/shards/{00000..00099}.tar`). A shard is a Parquet row
    group or a tar."""

    def __init__(self, path: str):
        self.path = _curated_folder(str(path))
        self.tasks = plan_inputs([self.path])
        for task in self.tasks:
            if task.kind == "url_list" or not holds_images(task):
                raise InputError(f"{task.path}: has no images to train on (a URL list or a metadata run's output); "
                                 f"run `curate run` with a download stage first")
        self.shards = [task.describe() for task in self.tasks]
        self.fingerprint = _fingerprint(self.shards)

    def read(self, index: int, skip: int = 0) -> Iterator[Pair]:
        """The usable samples of shard `index` after the first `skip`: an image and a caption (a
        sample cut off at the end of a tar, or without an image or a caption, is not one). The
        skipped ones are read (a tar has no index) but not converted."""
        for table in self._tables(index):
            if skip >= table.num_rows:
                skip -= table.num_rows
                continue
            table, skip = table.slice(skip), 0
            yield from map(Pair._make, zip(*(table.column(c).to_pylist() for c in Pair._fields)))

    def tables(self) -> Iterator[pa.Table]:
        """uid, text and image of every usable sample, shard after shard, in batches."""
        for index in range(len(self.tasks)):
            yield from self._tables(index)

    def _tables(self, index: int) -> Iterator[pa.Table]:
        return read_pairs(self.tasks[index], READ_BATCH)

    def texts(self) -> Iterator[str]:
        """Every usable sample's caption, shard after shard."""
        for table in self.tables():
            yield from table["text"].to_pylist()


def _curated_folder(path: str) -> str:
    """A curated output folder's parquet/ (else shards/) subfolder; any other path as given."""
    if any(c in path for c in "*?[{") or not is_folder(path):
        return path
    for sub in ("parquet", "shards"):
        inner = f"{path.rstrip('/')}/{sub}"
        if exists(inner) and (is_url(inner) or is_folder(inner)):
            return inner
    return path


class RecordSource:
    """Records already in memory (e.g. LLaVA-Instruct conversations, whose images are read when
    used), cut into shards of `per_shard` consecutive records."""

    def __init__(self, records: Sequence[Any], name: str, per_shard: int = 64):
        if not records:
            raise ValueError(f"{name}: no records to train on")
        self.records, self.per_shard = records, per_shard
        count = -(-len(records) // per_shard)
        self.shards = [f"{name} records {i * per_shard}-{min(len(records), (i + 1) * per_shard) - 1}"
                       for i in range(count)]
        self.fingerprint = _fingerprint(self.shards)

    def read(self, index: int, skip: int = 0) -> Iterator[Any]:
        """The records of shard `index` after the first `skip`."""
        return iter(self.records[index * self.per_shard + skip:(index + 1) * self.per_shard])
