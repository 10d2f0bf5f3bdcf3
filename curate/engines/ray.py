"""The Ray engine: Ray Data maps the pass's tasks over an actor pool, and global stages'
shuffles are Ray Data's sort-based shuffle (a groupby on the partition column, one block per file).

Tasks run whole, with the shared driver, so the output layout, resume markers and results
are those of the local engine. When a stage loads a model (`Stage.uses_model`), the tasks
run in an actor pool: each actor builds and sets up the stages once, so the model loads
once per worker. Otherwise they run as plain Ray tasks, which skip the actor start-up
(Ray reuses task workers, and each keeps its set-up stages between tasks). Without an address it
starts a local Ray; with one (`auto` or host:port) it joins that cluster. Input and output paths
must be reachable from every node (a shared file system or object store mount).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pyarrow as pa

from curate.engines.driver import TaskEngine
from curate.engines.runnable import RunPipeline
from curate.engines.shuffle import PARTITION_COLUMN, Reducer, call, reduce_group, with_partition
from curate.engines.task import TaskJob, run_task, stages_for
from curate.io.work import read_work
from curate.stage import Dataset

BLOCKS_PER_WORKER = 3


def run_jobs(batch: dict) -> dict:
    """Run a block of pickled task jobs; return their markers as JSON."""
    return {"marker": [json.dumps(run_task(pickle.loads(job))) for job in batch["job"]]}


def read_with_partition(keys: list[str], partitions: int, batch: pa.Table) -> pa.Table:
    """The rows of a block's work files (a column `path`), with their partition column."""
    tables = [read_work(path) for path in batch.column("path").to_pylist()]
    return with_partition(keys, partitions, pa.concat_tables(tables))


class TaskRunner:
    """A Ray Data actor for pipelines with model stages: the stages load once, in the constructor."""

    def __init__(self, pipeline: RunPipeline) -> None:
        stages_for(pipeline)

    def __call__(self, batch: dict) -> dict:
        return run_jobs(batch)


class RayEngine(TaskEngine):
    """Runs a pipeline on a Ray cluster (or a local Ray) with `workers` concurrent actors or tasks."""

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
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        # sort-based shuffle: reduce tasks take one range of partitions each through the object
        # store (which spills); the hash shuffle's aggregator actors hold every partition they own
        # in memory, a share of the pool (2.98x a worker's memory from 1M to 10M rows)
        context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        try:
            yield
        finally:
            if started:
                ray.shutdown()

    def map_tasks(self, jobs: list[TaskJob]) -> Iterable[dict]:
        import ray

        items = [{"job": pickle.dumps(job)} for job in jobs]
        # a few blocks per actor, each holding several tasks: per-block scheduling has a cost of its own
        blocks = min(len(items), BLOCKS_PER_WORKER * self.workers)
        pipeline = jobs[0].pipeline
        uses_model = any(stage.uses_model for stage in pipeline.build_stages())
        concurrency = min(self.workers, blocks)
        # model actors share the cluster's GPUs (at most one each); Ray hides GPUs from an actor that asks none
        gpus = ray.cluster_resources().get("GPU", 0) if uses_model else 0
        dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            TaskRunner if uses_model else run_jobs, batch_size=None, concurrency=concurrency, num_cpus=1,
            **({"fn_constructor_args": (pipeline,)} if uses_model else {}),
            **({"num_gpus": min(1.0, gpus / concurrency)} if gpus else {}),
        )
        for row in dataset.iter_rows():
            yield json.loads(row["marker"])

    def map_calls(self, fn: Callable, items: list) -> list:
        import ray

        remote = ray.remote(num_cpus=1)(call)
        return ray.get([remote.remote(fn, item) for item in items])

    def shuffle(self, data: Dataset, keys: list[str], partitions: int, reduce: Reducer, work: Path) -> list[dict]:
        import ray

        # blocks of whole files, twice as many as the partitions (at least a few per worker): a block
        # holds about half of partition_rows rows however large the data (not Ray's 128 MiB:
        # read_parquet would put a whole 1M-row fit in one block). A block per file made a task of
        # every file in each of the sort's stages: bench/scale.py's 10M rows took 24.7 s warm, now
        # 18.5 s (a block of partition_rows: 18.8 s, but its workers' memory grew 1.20x from 1M rows)
        blocks = min(len(data.files), max(BLOCKS_PER_WORKER * self.workers, 2 * partitions))
        files = ray.data.from_items([{"path": path} for path in data.files], override_num_blocks=blocks)
        dataset = files.map_batches(partial(read_with_partition, keys, partitions), batch_size=None,
                                    batch_format="pyarrow")
        grouped = dataset.groupby(PARTITION_COLUMN, num_partitions=partitions).map_groups(
            partial(reduce_group, reduce), batch_format="pyarrow")
        return [{"path": row["path"], "rows": int(row["rows"])} for row in grouped.take_all()]
