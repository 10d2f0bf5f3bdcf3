"""Local paths and URLs (s3://, gs://, hf://, ...): expand patterns, open, list, read, stamp,
and write atomically.

A local path takes the road it took before URLs were supported (pathlib, the built-in open,
pyarrow's own reader); only a URL goes through fsspec. S3 settings come from the AWS SDK's
usual sources, the same on every worker of a cluster: AWS_ENDPOINT_URL for an S3-compatible
server (MinIO, Ceph, moto), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws for the
credentials. Every failure is a StorageError naming the path and what was expected.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import fsspec
from braceexpand import UnbalancedBracesError, braceexpand

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = ("*", "?", "[")
# the credential errors of botocore (S3) and google-auth (GCS), matched by name: neither is a dependency
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                   "DefaultCredentialsError"}


class StorageError(ValueError):
    """A local path or URL cannot be used; the message names it and says what was expected."""


def is_url(path: str | Path) -> bool:
    """Whether `path` is a URL (a protocol before ://) rather than a local path."""
    return bool(_URL.match(str(path)))


@contextmanager
def explained(path: str, expected: str = "an object") -> Iterator[None]:
    """Turn a storage failure inside the block into a StorageError naming `path`."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageError(f"{path}: no such file or object (expected {expected})") from exc
    except PermissionError as exc:
        raise StorageError(f"{path}: access denied ({exc}); check the credentials' permissions") from exc
    except Exception as exc:
        if type(exc).__name__ not in _NO_CREDENTIALS:
            raise
        raise StorageError(f"{path}: no credentials ({exc}); for S3 set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, ~/.aws/credentials)") from exc


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of a URL and the path inside it."""
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:  # "Install s3fs to access S3", "Protocol not known: foo"
        raise StorageError(f"{url}: {exc}") from exc


def expand(pattern: str | Path) -> list[str]:
    """The paths a pattern names: brace ranges and lists (`{00000..00099}`, `{a,b}`) expanded as
    img2dataset and webdataset do, then globs (`*`, `?`, `[...]`) matched, each sorted. A local path
    that exists as written is itself; a name without glob characters is kept, to be checked by its
    reader; a glob that matches nothing is an error."""
    pattern = str(pattern)
    if not is_url(pattern) and os.path.exists(pattern):
        return [pattern]
    try:
        names = list(braceexpand(pattern))
    except UnbalancedBracesError as exc:
        raise StorageError(f"{pattern}: {exc}") from exc
    paths: list[str] = []
    for name in names:
        if not any(c in name for c in _GLOB_CHARS):
            paths.append(name)
            continue
        if is_url(name):
            fs, inner = filesystem(name)
            with explained(name, "a glob over objects"):
                matched = sorted(fs.unstrip_protocol(p) for p in fs.glob(inner))
        else:
            matched = sorted(glob.glob(name))
        if not matched:
            raise StorageError(f"{name}: no file or object matches")
        paths += matched
    return paths


def is_folder(path: str) -> bool:
    """Whether `path` is a folder (a local one, or a prefix holding objects); an error when it is
    neither a folder nor a file."""
    if not is_url(path):
        if not os.path.exists(path):
            raise StorageError(f"{path}: no such file or folder")
        return os.path.isdir(path)
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)  # a listing cached earlier in this process may predate the object
    with explained(path, "an object or a prefix holding objects"):
        return fs.info(inner)["type"] == "directory"


def files_under(folder: str) -> list[str]:
    """Every file under a folder or prefix, at any depth (local paths as pathlib writes them)."""
    if not is_url(folder):  # os.walk knows files from folders without a stat per file
        return [str(Path(top, name)) for top, _, names in os.walk(folder) for name in names]
    fs, inner = filesystem(folder)
    with explained(folder, "a prefix holding objects"):
        return [fs.unstrip_protocol(p) for p in fs.find(inner)]


def files_in(folder: str) -> list[str]:
    """The files directly inside a folder or prefix, sorted."""
    if not is_url(folder):
        return [str(p) for p in sorted(Path(folder).iterdir()) if p.is_file()]
    fs, inner = filesystem(folder)
    with explained(folder, "a prefix holding objects"):
        return sorted(fs.unstrip_protocol(p) for p in fs.find(inner, maxdepth=1))


def read_files(paths: list[str]) -> list[bytes]:
    """The contents of files, in order; the objects of one URL file system are fetched concurrently."""
    if not paths or not is_url(paths[0]):
        return [Path(p).read_bytes() for p in paths]
    fs, _ = filesystem(paths[0])
    inner = [filesystem(p)[1] for p in paths]
    with explained(paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"):
        data = fs.cat(inner)
    return [data[p] for p in inner]


def file_sizes(paths: list[str]) -> list[int]:
    """The sizes in bytes of files, in order, without reading them (for URLs, from the listing)."""
    if not paths or not is_url(paths[0]):
        return [os.path.getsize(p) for p in paths]
    fs, _ = filesystem(paths[0])
    with explained(paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"):
        return [int(size) for size in fs.sizes([filesystem(p)[1] for p in paths])]


def open_input(path: str) -> IO[bytes]:
    """A binary file object to read: the built-in open for a local path, fsspec's for a URL."""
    if not is_url(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    with explained(path):
        return fs.open(inner, "rb")


@contextmanager
def readable(path: str) -> Iterator[str | IO[bytes]]:
    """What pyarrow reads: a local path itself (pyarrow's native reader), or an open fsspec file."""
    if not is_url(path):
        yield path
        return
    with open_input(path) as handle:
        yield handle


def file_stamp(path: str | Path) -> list:
    """[path, size, version] of a file, or of each file under a folder or prefix (sorted), to tell
    whether an input changed: the version is the mtime in ns for a local file, an object's ETag
    (or checksum, else modification time) for a URL."""
    if not is_url(path):
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    path = str(path)
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)  # the stamp must be today's, not a listing cached earlier in this process
    with explained(path, "an object or a prefix holding objects"):
        info = fs.info(inner)
        if info["type"] != "directory":
            return [[path, info["size"], _version(info)]]
        found = fs.find(inner, detail=True)
    return [[fs.unstrip_protocol(name), entry["size"], _version(entry)] for name, entry in sorted(found.items())]


def _version(info: dict) -> str | None:
    """What changes when an object is rewritten, from fsspec's info: S3's ETag, GCS's md5Hash, the
    Hub's blob id, else a modification time."""
    for key in ("ETag", "etag", "md5Hash", "blob_id", "LastModified", "mtime", "updated", "last_modified"):
        if info.get(key):
            return str(info[key])
    return None


def exists(path: str | Path) -> bool:
    """Whether a file or folder (a prefix holding objects, for a URL) is at `path`."""
    if not is_url(path):
        return os.path.exists(path)
    fs, inner = filesystem(str(path))
    fs.invalidate_cache(inner)
    with explained(str(path)):
        return fs.exists(inner)


def read_bytes(path: str | Path) -> bytes:
    """A whole file's content."""
    return read_files([str(path)])[0]


@contextmanager
def atomic_output(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write that appears at `path` whole, and only when the block succeeds. Local:
    a temporary file of this writer's own (`NAME.PID-RANDOM.tmp`) renamed into place. URL: an
    upload completed when the block ends (an object store has no rename, but an object is never seen
    half-written: a multipart upload appears at its completion) and aborted when the block fails,
    leaving no object and no pending parts."""
    if not is_url(path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as handle:
                yield handle
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, inner = filesystem(str(path))
    with explained(str(path), "a location to write"):
        handle = fs.open(inner, "wb", autocommit=False)
    try:
        yield handle
        with explained(str(path), "a location to write"):
            handle.close()  # uploads the last part; the object does not exist yet
            handle.commit()
    except BaseException:
        handle.discard()
        handle.closed = True
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole file atomically (see atomic_output)."""
    with atomic_output(path) as handle:
        handle.write(data)


def remove(path: str | Path) -> None:
    """Delete a file, or a folder (a prefix, for a URL) with everything under it; nothing there is fine."""
    if not is_url(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        return
    fs, inner = filesystem(str(path))
    fs.invalidate_cache(inner)
    with explained(str(path)):
        found = fs.find(inner)  # the object itself, or the objects under the prefix `inner/`
        if found:
            fs.rm(found)
