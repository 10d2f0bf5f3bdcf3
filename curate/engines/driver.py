"""The task driver every engine shares: passes over input tasks, resumable by markers.

A task (a Parquet row group, a tar, a folder) is read batch by batch and written to its own
output part, so the output does not depend on how many workers run or where. A task's files
are renamed into place and then its completion marker is written; a rerun skips marked tasks
and removes leftover temporary files, so an interrupted run resumes without loss or
duplication. Engines differ only in how they map `run_task` over a pass's tasks.
"""

from __future__ import annotations

import json
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curate.engines.base import Pass, RunLayout, StageStats, merge_stats, plan_passes, run_pass_on_batch
from curate.io.readers import InputError, InputTask, read_task
from curate.io.writers import PartWriter, atomic, remove_temp_files, write_json_atomic, write_table_atomic
from curate.schema import INPUT_SCHEMA, LEDGER_SCHEMA
from curate.stage import GlobalStage, Stage, Verdict


@dataclass(frozen=True)
class TaskJob:
    """Everything a worker needs to run one task of one pass."""

    pipeline: Any  # curate.pipeline.Pipeline (kept untyped: engines do not import the pipeline layer)
    pass_: Pass
    task: InputTask
    layout_root: str
    state_path: str | None


_WORKER_STAGES: dict[str, list[Stage]] = {}
_WORKER_STATE: dict[tuple, Any] = {}


def stages_for(pipeline: Any) -> list[Stage]:
    """The pipeline's stages, built and set up once per worker process (per stage configuration)."""
    key = repr(pipeline.stages)
    if key not in _WORKER_STAGES:
        stages = pipeline.build_stages()
        for stage in stages:
            stage.setup()
        _WORKER_STAGES.clear()
        _WORKER_STAGES[key] = stages
    return _WORKER_STAGES[key]


def _state_for(path: str | None) -> Any:
    """A global stage's fitted state, loaded once per worker; a rewritten file is loaded again."""
    if path is None:
        return None
    stat = Path(path).stat()
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _WORKER_STATE:
        _WORKER_STATE.clear()  # one state at a time: a dedup state can be large
        with open(path, "rb") as handle:
            _WORKER_STATE[key] = pickle.load(handle)
    return _WORKER_STATE[key]


def _batches(job: TaskJob, layout: RunLayout):
    """The task's input for this pass: the reader on pass 0, the previous pass's part after.
    An empty task yields one empty batch, so its outputs still exist with a schema."""
    batch_size = job.pipeline.settings.batch_size
    if job.pass_.index == 0:
        batches, empty = read_task(job.task, batch_size), INPUT_SCHEMA.empty_table()
    else:
        source = pq.ParquetFile(layout.intermediate(job.pass_.index - 1, job.task.index))
        batches = (Verdict(pa.Table.from_batches([b])) for b in source.iter_batches(batch_size=batch_size))
        empty = source.schema_arrow.empty_table()
    yielded = False
    for verdict in batches:
        yielded = True
        yield verdict
    if not yielded:
        yield Verdict(empty)


def run_task(job: TaskJob) -> dict:
    """Run one task of one pass to its completion marker; returns the marker's content.
    A failure is re-raised naming the pass and the input it came from."""
    try:
        return _run_task(job)
    except InputError:  # already names its file: the CLI prints it as a user error
        raise
    except Exception as exc:
        raise RuntimeError(f"pass {job.pass_.index + 1}, {job.task.describe()}: {type(exc).__name__}: {exc}") from exc


def _run_task(job: TaskJob) -> dict:
    layout = RunLayout(job.layout_root)
    stages = stages_for(job.pipeline)
    state = _state_for(job.state_path)
    pass_, task = job.pass_, job.task
    out_parquet = layout.kept_parquet(task.index) if pass_.is_last else layout.intermediate(pass_.index, task.index)
    out_tar = layout.kept_tar(task.index) if pass_.is_last else None
    stats: list[dict[str, StageStats]] = []
    ledgers, partials, rows_in = [], [], 0
    with PartWriter(out_parquet, out_tar) as writer:
        for verdict in _batches(job, layout):
            rows_in += verdict.table.num_rows
            result = run_pass_on_batch(stages, pass_, verdict, state, read_step=pass_.index == 0)
            writer.write(result.kept)
            ledgers += result.ledger
            stats.append(result.stats)
            if pass_.fit is not None:
                partials.append(result.partial)
    ledger = pa.concat_tables(ledgers) if ledgers else LEDGER_SCHEMA.empty_table()
    write_table_atomic(ledger, layout.ledger_part(pass_.index, task.index))
    if pass_.fit is not None:
        fit_stage = stages[pass_.fit]
        path = layout.partial(pass_.index, task.index)
        _write_pickle_atomic(fit_stage.merge(partials), path)
    marker = {"task": task.index, "rows_in": rows_in, "rows_out": writer.rows,
              "stats": {k: s.to_dict() for k, s in merge_stats(stats).items()}}
    write_json_atomic(marker, layout.marker(pass_.index, task.index))
    return marker


class TaskEngine(ABC):
    """Drives passes over tasks; a subclass says where `run_task` runs (`map_tasks`)."""

    name: str
    workers: int
    progress: bool

    def session(self) -> AbstractContextManager:
        """A context that holds the engine's workers (a pool, a cluster connection) for a run."""
        return nullcontext()

    @abstractmethod
    def map_tasks(self, jobs: list[TaskJob]) -> Iterable[dict]:
        """Run every job with `run_task`; yield each marker as its task finishes, in any order."""

    def run(self, pipeline: Any, tasks: list[InputTask], layout: RunLayout) -> dict:
        """Run `pipeline` over the input tasks into a prepared layout; returns the run's stats."""
        started = time.perf_counter()
        remove_temp_files(layout.root)
        stages = pipeline.build_stages()
        passes = plan_passes(stages)
        markers: dict[tuple[int, int], dict] = {}
        with self.session():
            for pass_ in passes:
                state_path = str(layout.state(pass_.index - 1)) if pass_.apply is not None else None
                markers.update(self._run_pass(pipeline, pass_, tasks, layout, state_path, len(passes)))
                if pass_.fit is not None:
                    self._fit(stages[pass_.fit], pass_, tasks, layout)
        input_rows = sum(markers[(0, t.index)]["rows_in"] for t in tasks)
        task_stats = [{k: StageStats.from_dict(v) for k, v in m["stats"].items()} for m in markers.values()]
        elapsed = time.perf_counter() - started
        return layout.finish(
            stages, task_stats, input_rows, [t.index for t in tasks], passes,
            {"pipeline": pipeline.name, "engine": self.name, "workers": self.workers,
             "elapsed_s": round(elapsed, 3), "samples_per_s": round(input_rows / elapsed, 1) if elapsed else None},
        )

    def _run_pass(self, pipeline, pass_: Pass, tasks: list[InputTask], layout: RunLayout,
                  state_path: str | None, n_passes: int) -> dict[tuple[int, int], dict]:
        """Run the pass's unfinished tasks; progress is counted in input samples of finished tasks."""
        done: dict[tuple[int, int], dict] = {}
        todo = []
        for task in tasks:
            marker = layout.marker(pass_.index, task.index)
            if marker.exists():
                done[(pass_.index, task.index)] = _load_json(marker)
            else:
                todo.append(TaskJob(pipeline, pass_, task, str(layout.root), state_path))

        def input_rows(task: InputTask) -> int | None:
            first = layout.marker(0, task.index)
            return _load_json(first)["rows_in"] if first.exists() else task.rows

        sizes = {t.index: input_rows(t) for t in tasks}
        total = None if None in sizes.values() else sum(sizes.values())
        finished = sum(sizes[t] or 0 for _, t in done)
        desc = f"pass {pass_.index + 1}/{n_passes}" if n_passes > 1 else pipeline.name
        with tqdm(total=total, initial=finished, unit="sample", desc=desc, disable=not self.progress,
                  dynamic_ncols=True) as bar:
            for marker in self.map_tasks(todo) if todo else []:
                done[(pass_.index, marker["task"])] = marker
                bar.update(sizes[marker["task"]] or marker["rows_in"])
        missing = [t.index for t in tasks if (pass_.index, t.index) not in done]
        if missing:
            raise RuntimeError(f"{self.name} engine returned no result for task(s) {missing} of pass {pass_.index}")
        return done

    def _fit(self, stage: GlobalStage, pass_: Pass, tasks: list[InputTask], layout: RunLayout) -> None:
        """Merge the tasks' partial states of a global stage and store the finalized state."""
        path = layout.state(pass_.index)
        if path.exists():
            return
        partials = []
        for task in tasks:
            with open(layout.partial(pass_.index, task.index), "rb") as handle:
                partials.append(pickle.load(handle))
        state = stage.finalize(stage.merge(partials))
        write_json_atomic(stage.fit_stats(state), layout.fit_stats(pass_.index))  # before the state, which marks the fit done
        _write_pickle_atomic(state, path)


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_pickle_atomic(obj: Any, path: Path) -> None:
    with atomic(path) as tmp:
        tmp.write_bytes(pickle.dumps(obj))
