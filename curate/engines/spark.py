"""The Spark engine: the pass's tasks as a DataFrame, run with `mapInArrow`; global stages'
shuffles are Spark's own (a groupBy on a hash of the key, each group through `applyInArrow`).

Python workers are reused across tasks, so each builds and sets up the pipeline's stages
once; tasks run with the shared driver, so the output layout, resume markers and results
are those of the local engine. The default master is `local[workers]`; pass a
`spark://host:port` master to run on a standalone cluster. Input and output paths must be
reachable from every executor.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from curate.engines.driver import TaskEngine
from curate.engines.shuffle import PARTITION_COLUMN, Reducer, reduce_group
from curate.engines.task import TaskJob, run_task
from curate.stage import Dataset

PARTITIONS_PER_CORE = 3


def run_jobs(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow function: run each pickled job, emit its marker as JSON."""
    for batch in batches:
        for job in batch.column("job").to_pylist():
            yield pa.RecordBatch.from_pydict({"marker": [json.dumps(run_task(pickle.loads(job)))]})


class SparkEngine(TaskEngine):
    """Runs a pipeline with Spark (`local[N]` or a cluster master URL)."""

    name = "spark"

    def __init__(self, workers: int | None = None, master: str | None = None, progress: bool = True):
        self.workers = workers or os.cpu_count() or 1
        self.master = master or f"local[{self.workers}]"
        self.progress = progress
        self._spark = None

    @contextmanager
    def session(self) -> Iterator[None]:
        from pyspark.sql import SparkSession

        # executors run this interpreter, so they import the same curate and stage libraries
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        started = SparkSession.getActiveSession() is None
        self._spark = (
            SparkSession.builder.master(self.master).appName("curate")
            .config("spark.ui.enabled", "false")
            .config("spark.python.worker.reuse", "true")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .getOrCreate()
        )
        self._spark.sparkContext.setLogLevel("ERROR")
        try:
            yield
        finally:
            if started:  # a session held around several runs (a notebook's, a benchmark's) stays up
                self._spark.stop()
                self._spark = None

    def map_tasks(self, jobs: list[TaskJob]) -> Iterable[dict]:
        # a few partitions per core, each running several tasks: a Spark task costs ~0.1 s of its own
        context = self._spark.sparkContext
        partitions = min(len(jobs), PARTITIONS_PER_CORE * context.defaultParallelism)
        rows = context.parallelize([(pickle.dumps(job),) for job in jobs], partitions)
        frame = self._spark.createDataFrame(rows, "job binary")
        # collect, not toLocalIterator: the latter runs one partition (task) at a time
        for row in frame.mapInArrow(run_jobs, "marker string").collect():
            yield json.loads(row["marker"])

    def map_calls(self, fn: Callable, items: list) -> list:
        if not items:
            return []
        return self._spark.sparkContext.parallelize(items, len(items)).map(fn).collect()

    def shuffle(self, data: Dataset, keys: list[str], partitions: int, reduce: Reducer, work: Path) -> list[dict]:
        from pyspark.sql import functions as F

        frame = self._spark.read.parquet(*data.files)
        frame = frame.withColumn(PARTITION_COLUMN, F.pmod(F.xxhash64(F.col(keys[0])), F.lit(partitions)).cast("int"))
        grouped = frame.groupBy(PARTITION_COLUMN).applyInArrow(_grouped(reduce), "path string, rows long")
        return [{"path": row["path"], "rows": int(row["rows"])} for row in grouped.collect()]


def _grouped(reduce: Reducer) -> Callable[[pa.Table], pa.Table]:
    """`reduce_group` as a plain annotated function: Spark picks the grouped-map flavour from the
    function's type hints, which a functools.partial does not have."""

    def run(table: pa.Table) -> pa.Table:
        return reduce_group(reduce, table)

    return run
