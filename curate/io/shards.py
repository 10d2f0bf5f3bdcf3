"""A run's WebDataset shards as trainers stream them: open_clip's shard-size file (`sizes.json`)
and shards of a fixed number of samples (img2dataset's `number_sample_per_shard`).

Each task writes its kept samples to a tar of its own; the run's final assembly either moves
those tars into shards/ as they are (`place_task_tars`) or reshards them (`reshard`): the
tasks' members are copied as bytes (the USTAR headers, payloads and padding TarShard wrote), a
run of whole samples at a time, into shards of `per_shard` samples, the last one shorter. Memory
is one copy buffer whatever the sizes. Resharding commits a shard at a time and records where it
stopped, so a cut-short one resumes at its last committed shard and ends with the same bytes; a
task's tar is deleted once every shard holding its samples is committed (extra disk: about one
task's tar and one shard).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from curate.io.writers import atomic, write_json_atomic

SIZES_FILE = "sizes.json"  # open_clip_train's get_dataset_size reads it beside the tars: {"name.tar": samples}
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_COPY_CHUNK = 1 << 20


def shard_name(index: int) -> str:
    """The file name of output shard `index` (curate's part-NNNNN.tar)."""
    return f"part-{index:05d}.tar"


def write_sizes(folder: Path, sizes: dict[str, int]) -> None:
    """Write open_clip's shard-size file, `folder/sizes.json`, atomically."""
    write_json_atomic(sizes, folder / SIZES_FILE)


def place_task_tars(tars: list[Path], folder: Path, counts: list[int]) -> dict[str, int]:
    """Move each task's tar into `folder` under its own name (a tar already moved by a run cut short
    here stays) and write sizes.json from `counts` (each tar's samples); returns the sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    for tar in tars:
        target = folder / tar.name
        if tar.exists():
            os.replace(tar, target)
        elif not target.exists():
            raise FileNotFoundError(f"{tar}: a finished task's WebDataset shard is missing (and is not in {folder})")
    sizes = {tar.name: count for tar, count in zip(tars, counts)}
    write_sizes(folder, sizes)
    return sizes


def _member(header: bytes, path: Path, offset: int) -> tuple[bytes, int]:
    """The WebDataset key and payload size of the tar member whose header is `header`."""
    if header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0"):
        raise ValueError(f"{path}: byte {offset}: not a regular USTAR member as curate writes them")
    name = header[:100].split(b"\0", 1)[0]
    return name.rpartition(b"/")[2].split(b".", 1)[0], int(header[124:135], 8)


def _scan(path: Path, offset: int, want: int) -> tuple[int, int, bool]:
    """From byte `offset` (a sample's start) of tar `path`, find the end of the next `want`
    samples (runs of members with the same key): returns how many there were, the byte where the
    last one ends, and whether the archive ends there. Reads headers only."""
    taken, key, position = 0, None, offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        while True:
            header = handle.read(_BLOCK)
            if header == _ZERO_BLOCK:
                return taken + (key is not None), position, True
            if len(header) < _BLOCK:
                raise ValueError(f"{path}: ends at byte {position} inside a member header (truncated tar)")
            member_key, size = _member(header, path, position)
            if member_key != key:
                if key is not None:
                    taken += 1
                if taken == want:
                    return taken, position, False
                key = member_key
            position += _BLOCK + size + (-size % _BLOCK)
            handle.seek(position)


def _copy(path: Path, start: int, end: int, target) -> None:
    """Copy bytes [start, end) of file `path` to the open file `target`."""
    with open(path, "rb") as source:
        source.seek(start)
        left = end - start
        while left:
            chunk = source.read(min(_COPY_CHUNK, left))
            if not chunk:
                raise ValueError(f"{path}: ends before byte {end}")
            target.write(chunk)
            left -= len(chunk)


def reshard(sources: list[Path], folder: Path, per_shard: int, progress: Path) -> Iterator[tuple[str, int]]:
    """Copy the samples of tars `sources` (in order) into `folder` as shards of `per_shard`
    samples (shard_name(0), ...; the last one holds the rest), then write sizes.json. Yields each
    shard's name and sample count as it is committed. Where it stands is saved in `progress`
    after every shard and read back when it is there, so a cut-short call resumes at the next
    shard; sources every committed shard has passed are deleted."""
    if per_shard < 1:
        raise ValueError(f"samples per shard must be at least 1, got {per_shard}")
    fresh = {"per_shard": per_shard, "sources": len(sources), "shard": 0, "source": 0, "offset": 0, "sizes": {}}
    state = json.loads(progress.read_text()) if progress.exists() else fresh
    if (state["per_shard"], state["sources"]) != (per_shard, len(sources)):
        raise ValueError(f"{progress}: a resharding of {state['sources']} tars into {state['per_shard']} samples a "
                         f"shard, not {len(sources)} into {per_shard}: remove it to start again")
    folder.mkdir(parents=True, exist_ok=True)
    while state["source"] < len(sources):
        pieces, count, source, offset = [], 0, state["source"], state["offset"]
        while count < per_shard and source < len(sources):
            taken, end, finished = _scan(sources[source], offset, per_shard - count)
            if taken:
                pieces.append((sources[source], offset, end))
            count += taken
            source, offset = (source + 1, 0) if finished else (source, end)
        if count:
            name = shard_name(state["shard"])
            with atomic(folder / name) as tmp, open(tmp, "wb") as target:
                for path, start, end in pieces:
                    _copy(path, start, end, target)
                size = sum(end - start for _, start, end in pieces)
                target.write(bytes(2 * _BLOCK + (-(size + 2 * _BLOCK) % _RECORD)))  # tarfile's end of archive
            state["sizes"][name] = count
            state["shard"] += 1
        consumed = sources[state["source"]:source]
        state["source"], state["offset"] = source, offset
        write_json_atomic(state, progress)
        for path in consumed:
            path.unlink(missing_ok=True)
        if count:
            yield name, count
    write_sizes(folder, state["sizes"])
