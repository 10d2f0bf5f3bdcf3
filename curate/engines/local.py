"""The local engine: a pool of worker processes on this machine (in-process for one worker)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from curate.engines.driver import TaskEngine, TaskJob, run_task


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
                                             initializer=share_cores, initargs=(threads,))
        try:
            yield
        finally:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def map_tasks(self, jobs: list[TaskJob]) -> Iterable[dict]:
        return self._executor.map(run_task, jobs) if self._executor else map(run_task, jobs)


def share_cores(threads: int) -> None:
    """A worker's share of the machine: `threads` math threads, not every core in every worker.
    The variables reach torch and FAISS, which load later in the worker; threadpoolctl reaches
    the BLAS and OpenMP already loaded (numpy's, with the parent's modules)."""
    from threadpoolctl import threadpool_limits

    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    threadpool_limits(threads)
