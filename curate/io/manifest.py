"""A finished run's manifest: every output file curate wrote, its size and checksum.

It is the output's `_SUCCESS`, written last (after every file it lists is on disk, fsynced), so
its presence says the run finished and its content says what finished means: a reused run, and
`curate verify`, check each file against it. Checksums are xxh3-128 of the whole file (xxhash:
memory speed, so a check costs a read of the output). The same module hashes samples of input
files for the run's fingerprint: the first and last MiB and the size, cheap whatever the size.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import xxhash

from curate.io.paths import exists, explained, filesystem, is_url, open_input, read_bytes
from curate.io.writers import write_json_atomic
from curate.provenance import curate_version

SUCCESS = "_SUCCESS"
DIGEST = "xxh3_128"
_PART = re.compile(r"(shards|parquet)/part-\d{5,}\.(tar|parquet)")  # curate's part files, by their names
_CHUNK = 8 * 2**20
_SAMPLE = 2**20  # bytes hashed at each end of an input file
_THREADS = 8  # files read at once (the reads wait on storage, not the CPU)


def digest(path: str | Path) -> str:
    """The xxh3-128 of a file's bytes (local path or URL), read in 8 MiB chunks."""
    state = xxhash.xxh3_128()
    with open_input(str(path)) as handle:
        while chunk := handle.read(_CHUNK):
            state.update(chunk)
    return state.hexdigest()


def describe(root: Path, paths: list[Path]) -> dict[str, dict]:
    """Manifest entries for local files under `root`: {relative path: {size, xxh3_128}}."""
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, DIGEST: digest(p)} for p in paths}


def content_samples(paths: list[str]) -> list[str]:
    """For each local file, the xxh3-128 of its size, first MiB and last MiB: a content check for
    the fingerprint that costs at most 2 MiB a file (a rewrite that keeps size and mtime is seen)."""
    with ThreadPoolExecutor(_THREADS) as pool:
        return list(pool.map(_sample, paths))


def _sample(path: str) -> str:
    state = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        state.update(size.to_bytes(8, "little"))
        state.update(handle.read(_SAMPLE))
        if size > _SAMPLE:
            handle.seek(max(_SAMPLE, size - _SAMPLE))
            state.update(handle.read(_SAMPLE))
    return state.hexdigest()


def write_manifest(root: Path, run: dict, files: dict[str, dict]) -> None:
    """Write `root/_SUCCESS`: the run's fingerprint, curate's version, the time, and `files`
    (their bytes must already be durable); fsynced with its folder, so it is the last word."""
    manifest = {"fingerprint": run["fingerprint"], "pipeline": run.get("pipeline"), "curate": curate_version(),
                "finished": datetime.now(UTC).isoformat(timespec="seconds"), "digest": DIGEST,
                "files": dict(sorted(files.items()))}
    write_json_atomic(manifest, root / SUCCESS, durable=True)


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of the output at `root` (a folder or URL), or None when it has none."""
    path = f"{str(root).rstrip('/')}/{SUCCESS}"
    if not exists(path):
        return None
    try:
        return json.loads(read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a curate manifest ({exc})") from exc


def verify(root: str | Path, checksums: bool = True, fingerprint: str | None = None) -> list[str]:
    """What is wrong with the output at `root` (a folder or URL) against its manifest, one line per
    problem (empty: every file is there, whole, unchanged): no manifest, another run's manifest
    (`fingerprint` given), a listed file missing, of another size or (with `checksums`, which reads
    every file) other bytes, a part file the manifest does not list."""
    root = str(root).rstrip("/")
    try:
        manifest = read_manifest(root)
    except ValueError as exc:
        return [str(exc)]
    if manifest is None:
        return [f"no {SUCCESS}: the run did not finish (or was written before curate kept manifests)"]
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        return [f"{SUCCESS} belongs to another run (fingerprint {str(manifest.get('fingerprint'))[:12]}...)"]
    listed: dict[str, dict] = manifest["files"]
    found = _sizes(root, list(listed))
    problems = [_size_problem(name, entry["size"], found.get(name)) for name, entry in listed.items()]
    problems = [p for p in problems if p]
    unlisted = sorted(n for n in found if _PART.fullmatch(n) and n not in listed)
    problems += [f"{name}: not in the manifest (not written by this run)" for name in unlisted]
    if checksums:
        same_size = [n for n, e in listed.items() if found.get(n) == e["size"]]
        with ThreadPoolExecutor(_THREADS) as pool:
            digests = pool.map(lambda n: digest(f"{root}/{n}"), same_size)
            problems += [f"{n}: checksum {d} does not match the manifest's {listed[n][DIGEST]}"
                         for n, d in zip(same_size, digests) if d != listed[n][DIGEST]]
    return problems


def _size_problem(name: str, expected: int, size: int | None) -> str | None:
    if size is None:
        return f"{name}: missing"
    if size != expected:
        return f"{name}: {size} bytes, the manifest says {expected} ({'truncated' if size < expected else 'grown'})"
    return None


def _sizes(root: str, names: list[str]) -> dict[str, int]:
    """The size of each of `names` found under `root` and of every file in its part folders (by
    relative path): local files by a stat each, objects from one listing of the prefix."""
    if not is_url(root):
        found = {name: os.stat(path).st_size for name in names if os.path.isfile(path := os.path.join(root, name))}
        for folder in ("shards", "parquet"):
            if os.path.isdir(os.path.join(root, folder)):
                with os.scandir(os.path.join(root, folder)) as entries:
                    found |= {f"{folder}/{e.name}": e.stat().st_size for e in entries if e.is_file()}
        return found
    fs, inner = filesystem(root)
    fs.invalidate_cache(inner)
    with explained(root, "a prefix holding a curate run"):
        listing = fs.find(inner, detail=True)
    return {name[len(inner):].lstrip("/"): int(entry["size"]) for name, entry in listing.items()}
