"""Outputs on object storage: a run whose output is a URL (s3://, gs://, ...) works in a local
staging folder, exactly as a run into a local output does (so an interrupted run resumes from
it), and is published to the URL when it finishes.

The URL's `_work/run.json` says which run owns the prefix: written with complete=false when a
run claims the prefix, and with complete=true after every other object is uploaded (each one
whole or not at all), so it is the commit marker; the run's manifest (`_SUCCESS`) follows it, last.
A publish cut short is redone by the next run (the objects are deterministic), and so is one whose
objects no longer match the manifest; a URL holding another run is refused unless overwriting,
which removes only the objects curate publishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from curate.io.manifest import SUCCESS, verify
from curate.io.paths import (
    atomic_output,
    exists,
    explained,
    files_in,
    filesystem,
    is_url,
    read_bytes,
    remove,
    write_bytes,
)

FILES = ("stats.json", "report.html", "README.md", "uids.npy", "run.json")  # README.md: the dataset card
PART_FOLDERS = {"shards": re.compile(r"part-\d{5,}\.tar|sizes\.json"), "parquet": re.compile(r"part-\d{5,}\.parquet"),
                "rejected.parquet": re.compile(r"pass\d+-part-\d{5,}\.parquet")}
RUN_FILE = "_work/run.json"
_UPLOADS = 8  # objects uploaded at once
_CHUNK = 8 * 2**20
_log = logging.getLogger(__name__)


def staging_folder(url: str) -> Path:
    """The default staging folder of an output URL: stable across runs, so a rerun resumes there
    (`$XDG_CACHE_HOME` or ~/.cache, then curate/staging/<first 16 hex of the URL's sha256>)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "curate" / "staging" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def claim(url: str, fingerprint: dict, overwrite: bool, inputs: list[str] = (), checksums: bool = False) -> dict | None:
    """Claim the output URL for this run; returns the stats of a finished identical run published
    there (read from its stats.json) whose objects match its manifest (sizes; with `checksums`,
    their bytes too), else None once the prefix's run.json names this run (unfinished).

    A prefix that is, holds or lies inside an input URL is refused, overwrite or not. A prefix
    holding another run (finished or not), or objects without a run.json, is refused unless
    `overwrite`; overwriting removes only what curate publishes (FILES, the part files of
    PART_FOLDERS and _work/run.json) and refuses a prefix holding those names without a run.json.
    """
    url = url.rstrip("/")
    _refuse_inputs(url, inputs)
    run_url = f"{url}/{RUN_FILE}"
    previous = json.loads(read_bytes(run_url)) if exists(run_url) else None
    if previous is not None and previous["fingerprint"] == fingerprint["fingerprint"]:
        if previous.get("complete") and not (problems := verify(url, checksums, fingerprint["fingerprint"])):
            return {**json.loads(read_bytes(f"{url}/stats.json")), "resumed_complete": True}
        if previous.get("complete"):
            _log.warning(f"{url} holds this run, published, but not as its manifest says ({problems[0]}): "
                         "publishing it again")
            remove(f"{url}/{SUCCESS}")
            write_bytes(run_url, json.dumps({**fingerprint, "complete": False}, sort_keys=True).encode())
        return None  # this run's claim: a run or a publish was interrupted
    if _occupied(url):
        if not overwrite:
            what = "a run of a different pipeline or input" if previous else "objects that are not a curate run"
            raise FileExistsError(f"{url} holds {what}; pass --overwrite or choose another --output")
        published = published_objects(url)
        if previous is None and published:
            raise FileExistsError(f"{url} is not a curate run (no {RUN_FILE}) but holds {published[0]}: curate "
                                  "removes only what it publishes; move it or choose another --output")
        for path in published:
            remove(path)
    write_bytes(run_url, json.dumps({**fingerprint, "complete": False}, sort_keys=True).encode())
    return None


def _occupied(url: str) -> bool:
    """Whether anything is under the prefix (a bucket with nothing in it is empty)."""
    fs, inner = filesystem(url)
    fs.invalidate_cache(inner)
    with explained(url, "a prefix"):
        return fs.exists(inner) and bool(fs.ls(inner))


def _refuse_inputs(url: str, inputs: list[str]) -> None:
    """Raise when the output URL is, contains or lies inside an input URL (local inputs are the
    staging folder's concern)."""
    for raw in inputs:
        path = str(raw).rstrip("/")
        if not is_url(path):
            continue
        if path == url or path.startswith(url + "/"):
            raise FileExistsError(f"output {url} contains input {raw}: choose an --output outside the input")
        if url.startswith(path + "/"):
            raise FileExistsError(f"output {url} is inside input {raw}: choose an --output outside the input")


def published_objects(url: str) -> list[str]:
    """The objects under `url` that curate publishes (its manifest first, run.json last), of this
    run or another."""
    found = [f"{url}/{name}" for name in (SUCCESS, *FILES) if exists(f"{url}/{name}")]
    for folder, name in PART_FOLDERS.items():
        if exists(f"{url}/{folder}"):
            found += [p for p in files_in(f"{url}/{folder}") if name.fullmatch(p.rpartition("/")[2])]
    return found + ([f"{url}/{RUN_FILE}"] if exists(f"{url}/{RUN_FILE}") else [])


def publish(staging: Path, url: str) -> None:
    """Upload a finished run's outputs from its staging folder to `url` (the part files, ledger,
    stats, report and uids that exist), each whole or not at all, then its run.json (complete),
    then its manifest (_SUCCESS)."""
    url = url.rstrip("/")
    staging = Path(staging)
    local = [staging / name for name in FILES if (staging / name).is_file()]
    for folder, name in PART_FOLDERS.items():
        if (staging / folder).is_dir():
            local += sorted(p for p in (staging / folder).iterdir() if name.fullmatch(p.name))
    with ThreadPoolExecutor(_UPLOADS) as pool:
        list(pool.map(lambda p: _upload(p, f"{url}/{p.relative_to(staging).as_posix()}"), local))
    if not json.loads((staging / RUN_FILE).read_text()).get("complete"):
        raise RuntimeError(f"{staging / RUN_FILE}: the run is not finished; nothing to mark complete at {url}")
    _upload(staging / RUN_FILE, f"{url}/{RUN_FILE}")
    _upload(staging / SUCCESS, f"{url}/{SUCCESS}")


def _upload(path: Path, url: str) -> None:
    with open(path, "rb") as source, atomic_output(url) as target:
        shutil.copyfileobj(source, target, _CHUNK)
