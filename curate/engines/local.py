"""The local engine: a pool of worker processes on this machine (in-process for one worker).

Its shuffle is an out-of-core hash partitioning: each worker spills its files' rows to one
Arrow IPC file per input, a record batch per (batch, partition), and each partition is then read
back from every spill file's record batches and reduced, one partition per worker at a time.
Memory is a batch on the map side and a partition on the reduce side, whatever the data's size.
IPC, not Parquet: a spill is written once and read once, and a 65k-row batch cut into 40
partitions takes 0.3 ms to write as IPC, 3.4 ms as uncompressed Parquet (row group statistics
and page encoding).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import psutil
import pyarrow as pa

from curate.engines.driver import TaskEngine
from curate.engines.shuffle import Reducer, batches, partition_slices
from curate.engines.task import TaskJob, run_task
from curate.io.work import work_schema
from curate.io.writers import atomic
from curate.stage import Dataset

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_INTERVAL = 0.5  # seconds between the watchdog's looks at the parent


class LocalEngine(TaskEngine):
    """Runs a pipeline on this machine with `workers` processes."""

    name = "local"

    def __init__(self, workers: int = 1, progress: bool = True):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.progress = progress
        self._executor: ProcessPoolExecutor | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        if self.workers == 1:
            yield
            return
        # fork: workers start in milliseconds with every module already imported (pyarrow
        # re-creates its thread pools after a fork). Not once this process has loaded torch or
        # FAISS (a trainer ran here, as in `curate bootstrap`): a child forked after their OpenMP
        # threads ran deadlocks in FAISS's OpenMP. Then, or where fork is unavailable, forkserver.
        fork_safe = "fork" in multiprocessing.get_all_start_methods() and not {"torch", "faiss"} & set(sys.modules)
        method = "fork" if fork_safe else "forkserver"
        threads = max(1, len(os.sched_getaffinity(0)) // self.workers)
        self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                             initializer=start_worker, initargs=(threads, os.getpid()))
        try:
            yield
        finally:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def map_tasks(self, jobs: list[TaskJob]) -> Iterable[dict]:
        return self._executor.map(run_task, jobs) if self._executor else map(run_task, jobs)

    def map_calls(self, fn: Callable, items: list) -> list:
        return list(self._executor.map(fn, items) if self._executor else map(fn, items))

    def shuffle(self, data: Dataset, keys: list[str], partitions: int, reduce: Reducer, work: Path) -> list[dict]:
        spills = [(path, str(work / f"spill-{i:05d}.arrow")) for i, path in enumerate(data.files)]
        layouts = self.map_calls(partial(spill, keys, partitions), spills)
        sources: list[list[tuple[str, list[int]]]] = [[] for _ in range(partitions)]
        for (_, target), groups in zip(spills, layouts):
            for p in range(partitions):
                mine = [g for g, owner in enumerate(groups) if owner == p]
                if mine:
                    sources[p].append((target, mine))
        todo = [(p, found) for p, found in enumerate(sources) if found]
        try:
            return self.map_calls(partial(reduce_spilled, reduce), todo)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def spill(keys: list[str], partitions: int, paths: tuple[str, str]) -> list[int]:
    """Map side: the rows of one file, hashed to partitions, written as record batches (one per
    batch and partition) to an Arrow IPC spill file; returns the partition of each, in order."""
    source, target = paths
    owners: list[int] = []
    with atomic(Path(target)) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        writer = None
        for table in batches(source):
            if writer is None:
                writer = pa.ipc.new_file(sink, table.schema)
            for p, rows in partition_slices(table, keys, partitions):
                for batch in rows.to_batches():
                    writer.write_batch(batch)
                    owners.append(p)
        if writer is None:
            writer = pa.ipc.new_file(sink, work_schema(source))
        writer.close()
    return owners


def reduce_spilled(reduce: Reducer, job: tuple[int, list[tuple[str, list[int]]]]) -> dict:
    """Reduce side: one partition's record batches from every spill file, reduced together."""
    partition, sources = job
    parts = []
    for path, indices in sources:
        with pa.OSFile(path) as file:
            reader = pa.ipc.open_file(file)
            parts += [reader.get_batch(i) for i in indices]
    return reduce(partition, pa.Table.from_batches(parts))


def start_worker(threads: int, parent: int) -> None:
    """The local pool's initializer: the worker's share of the cores, and its exit with `parent`."""
    share_cores(threads)
    exit_with_parent(parent)


def exit_with_parent(parent: int) -> None:
    """Make this process exit when `parent` (the run's process) dies, SIGKILL included, so no
    orphaned worker keeps running: on Linux the kernel's parent-death signal (prctl
    PR_SET_PDEATHSIG: SIGKILL when the process that forked this one exits; with forkserver that
    is the server, which exits with the run), and everywhere a watchdog thread that exits once
    `parent` is gone or this process has another parent (also covering a parent that died before
    the signal was set)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_watch_parent, args=(parent, os.getppid()), daemon=True, name="curate-parent-watch").start()


def _watch_parent(parent: int, forked_by: int) -> None:
    while os.getppid() == forked_by and psutil.pid_exists(parent):
        time.sleep(_WATCH_INTERVAL)
    os._exit(1)


def share_cores(threads: int) -> None:
    """A worker's share of the machine: `threads` math threads, not every core in every worker.
    The variables reach torch and FAISS, which load later in the worker; threadpoolctl reaches
    the BLAS and OpenMP already loaded (numpy's, with the parent's modules)."""
    from threadpoolctl import threadpool_limits

    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    threadpool_limits(threads)
