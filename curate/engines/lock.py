"""One run at a time in an output folder: a lock file naming its owner.

The lock is `_curate.lock` in the folder (the local staging folder of an output URL), held for the
whole run with flock(2), so the kernel (or the NFS server) frees it when the owner dies, SIGKILL
included; the file names the owner (pid, host, start) for the refusal message. A lock whose owner
is a dead process of this host is stale and taken over; one written on another host is not (its
process cannot be checked from here): the message says which file to delete if that run is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psutil

LOCK_FILE = "_curate.lock"


class OutputLocked(FileExistsError):
    """Another live run holds the output folder's lock."""


@contextmanager
def output_lock(folder: str | Path) -> Iterator[Path]:
    """Hold `folder`'s lock for the block (created with the folder when missing) and release it at
    the end, also on an error or KeyboardInterrupt; raise OutputLocked, naming the owner, while
    another live run holds it. The folders this call created are removed again if the block left them empty."""
    folder = Path(folder).absolute()
    created = [f for f in (folder, *folder.parents) if not f.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = _acquire(path)
    try:
        yield path
    finally:
        _release(path, fd)
        for made in created:  # innermost first; one the block wrote into stays, and so do those above it
            if any(made.iterdir()):
                break
            made.rmdir()


def _acquire(path: Path) -> int:
    """Open and flock the lock file; write this process as its owner unless a live one is named."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read(fd)
            os.close(fd)
            raise OutputLocked(_refusal(path, owner)) from None
        if _is_current(fd, path):
            break
        os.close(fd)  # the file was released (unlinked) between our open and flock: lock the new one
    owner = _read(fd)
    if owner and _may_be_alive(owner):  # a file system without working flock, or another host's run
        os.close(fd)
        raise OutputLocked(_refusal(path, owner))
    me = psutil.Process()
    record = {"pid": me.pid, "host": socket.gethostname(), "create_time": me.create_time(),
              "started": datetime.now(UTC).isoformat(timespec="seconds"), "command": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    return fd


def _release(path: Path, fd: int) -> None:
    """Remove the lock file (if it is still ours), then drop the flock."""
    try:
        if _is_current(fd, path):
            path.unlink()
    finally:
        os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    """Whether `fd` is the file now at `path` (not one unlinked by a releasing run)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict:
    """The owner the lock file names ({} when empty or unreadable: a run that died while writing it)."""
    try:
        owner = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _may_be_alive(owner: dict) -> bool:
    """False when the owner is a process of this host that has exited (or whose pid is now another
    process's, told by its start time); True when it lives or runs on another host."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        return abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["create_time"])) < 0.01
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


def _refusal(path: Path, owner: dict) -> str:
    """The one-line refusal: the folder, the owner, and what to do."""
    who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
    if owner.get("host", socket.gethostname()) != socket.gethostname():
        advice = f"curate cannot check another host's processes: if that run is gone, delete {path}"
    else:
        advice = "wait for it to finish or stop it"
    return f"{path.parent} is in use by another curate run ({who}): {advice}"
