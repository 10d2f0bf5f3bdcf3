"""The Ray engine: Ray Data maps the pass's tasks over an actor pool.

Each actor builds and sets up the pipeline's stages once (models load once per worker)
and runs whole tasks with the shared driver, so the output layout, resume markers and
results are those of the local engine. Without an address it starts a local Ray; with one
(`auto` or host:port) it joins that cluster. Input and output paths must be reachable from
every node (a shared file system or object store mount).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from curate.engines.driver import TaskEngine, TaskJob, run_task


class TaskRunner:
    """A Ray Data actor: runs pickled task jobs and returns their markers as JSON."""

    def __call__(self, batch: dict) -> dict:
        return {"marker": [json.dumps(run_task(pickle.loads(job))) for job in batch["job"]]}


class RayEngine(TaskEngine):
    """Runs a pipeline on a Ray cluster (or a local Ray) with `workers` actors."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, progress: bool = True):
        self.workers = workers
        self.address = address
        self.progress = progress

    @contextmanager
    def session(self) -> Iterator[None]:
        import ray

        started = not ray.is_initialized()
        if started:
            # "local" starts a fresh Ray even where a `ray start` cluster runs or once ran on this node
            ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **({} if self.address else {"num_cpus": self.workers}))
        if self.workers is None:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            yield
        finally:
            if started:
                ray.shutdown()

    def map_tasks(self, jobs: list[TaskJob]) -> Iterable[dict]:
        import ray

        items = [{"job": pickle.dumps(job)} for job in jobs]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            TaskRunner, batch_size=1, concurrency=min(self.workers, len(items)), num_cpus=1
        )
        for row in dataset.iter_rows():
            yield json.loads(row["marker"])
