"""The task driver every engine shares: passes over input tasks, resumable by markers.

A run is cut into passes (curate.engines.plan); each pass maps `run_task` (curate.engines.task)
over its tasks, skipping those a marker says are done, and a pass ending at a global stage runs
its distributed fit. A rerun removes leftover temporary files and skips marked tasks and stored
fits, so an interrupted run resumes without loss or duplication. Engines differ only in how they
map `run_task` over a pass's tasks (`map_tasks`) and how they shuffle.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from curate.engines.finish import finish_run
from curate.engines.layout import RunLayout
from curate.engines.occurrences import count_repeats
from curate.engines.plan import Pass, StageStats, plan_passes
from curate.engines.runnable import RunPipeline
from curate.engines.shuffle import EngineFitContext
from curate.engines.task import TaskJob, TaskRejections, with_row_ids
from curate.engines.uniqueness import check_input_uids
from curate.io.readers.contract import InputTask
from curate.io.readers.uids import gives_uids
from curate.io.state import load_state, save_state
from curate.io.work import WORK_SUFFIX, write_work
from curate.io.writers import remove_temp_files
from curate.stage import Dataset, GlobalStage, Verdict


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

    def run(self, pipeline: RunPipeline, tasks: list[InputTask], layout: RunLayout) -> dict:
        """Run `pipeline` over the input tasks into a prepared layout; returns the run's stats."""
        started = time.perf_counter()
        remove_temp_files(layout.root)
        stages = pipeline.build_stages()
        passes = plan_passes(stages)
        markers: dict[tuple[int, int], dict] = {}
        # uids the input gives are checked unique before any work (check_input_uids) and every input
        # row is kept or rejected once, so only made or derived uids need the check at the end
        check_uids = any(stage.derives_samples for stage in stages) or not all(gives_uids(t) for t in tasks)
        with self.session():
            check_input_uids(self, tasks, pipeline.settings.read_limits(), layout.work / "uidcheck",
                             pipeline.settings.partition_rows, layout.uids_checked())
            shutil.rmtree(layout.work / "uidcheck", ignore_errors=True)
            count_repeats(self, tasks, pipeline.settings.read_limits(), layout.work / "repeatcount",
                          pipeline.settings.partition_rows, layout.repeats(), layout.repeats_counted())
            shutil.rmtree(layout.work / "repeatcount", ignore_errors=True)
            for pass_ in passes:
                state_path = str(layout.state(pass_.index - 1)) if pass_.apply is not None else None
                markers.update(self._run_pass(pipeline, pass_, tasks, layout, state_path, len(passes), check_uids))
                if pass_.fit is not None:
                    self._fit(stages[pass_.fit], pass_, tasks, layout, markers, pipeline.settings.partition_rows)
        input_rows = sum(markers[(0, t.index)]["rows_in"] for t in tasks)
        task_stats = [{k: StageStats.from_dict(v) for k, v in m["stats"].items()} for m in markers.values()]
        elapsed = time.perf_counter() - started
        return finish_run(
            layout, stages, task_stats, input_rows, [t.index for t in tasks], passes,
            {"pipeline": pipeline.name, "engine": self.name, "workers": self.workers,
             "elapsed_s": round(elapsed, 3), "samples_per_s": round(input_rows / elapsed, 1) if elapsed else None},
            write_uids="uids" in pipeline.settings.outputs, check_uids=check_uids,
        )

    def _run_pass(self, pipeline: RunPipeline, pass_: Pass, tasks: list[InputTask], layout: RunLayout,
                  state_path: str | None, n_passes: int, check_uids: bool) -> dict[tuple[int, int], dict]:
        """Run the pass's unfinished tasks; progress is counted in input samples of finished tasks."""
        done: dict[tuple[int, int], dict] = {}
        todo = []
        for task in tasks:
            marker = layout.marker(pass_.index, task.index)
            if marker.exists():
                done[(pass_.index, task.index)] = _load_json(marker)
            else:
                todo.append(TaskJob(pipeline, pass_, task, str(layout.root), state_path, check_uids))

        def input_rows(task: InputTask) -> int | None:
            first = layout.marker(0, task.index)
            return _load_json(first)["rows_in"] if first.exists() else task.rows

        sizes = {t.index: input_rows(t) for t in tasks}
        total = None if None in sizes.values() else sum(sizes.values())
        finished = sum(sizes[t] or 0 for _, t in done)
        names = [pipeline.stages[i].name for i in (pass_.apply, *pass_.maps) if i is not None]
        names += [f"{pipeline.stages[pass_.fit].name} (fit)"] if pass_.fit is not None else []
        desc = (f"pass {pass_.index + 1}/{n_passes}: " if n_passes > 1 else f"{pipeline.name}: ") + ", ".join(names)
        if done:
            tqdm.write(f"resuming: {len(done)} of {len(tasks)} tasks of pass {pass_.index + 1} done", file=sys.stderr)
        with tqdm(total=total, initial=finished, unit="sample", desc=desc, disable=not self.progress,
                  dynamic_ncols=True) as bar:
            for marker in self.map_tasks(todo) if todo else []:
                done[(pass_.index, marker["task"])] = marker
                bar.update(sizes[marker["task"]] or marker["rows_in"])
        missing = [t.index for t in tasks if (pass_.index, t.index) not in done]
        if missing:
            raise RuntimeError(f"{self.name} engine returned no result for task(s) {missing} of pass {pass_.index}")
        return done

    def _fit(self, stage: GlobalStage, pass_: Pass, tasks: list[InputTask], layout: RunLayout,
             markers: dict[tuple[int, int], dict], partition_rows: int) -> None:
        """Run a global stage's distributed fit over its tasks' fit rows; store its state and send
        its rejections to their tasks. A fit cut short is redone whole (its folders cleared)."""
        k = pass_.index
        if layout.state(k).exists():
            return
        for folder in (layout.fit_work(k), layout.decisions(k)):
            shutil.rmtree(folder, ignore_errors=True)
        files = tuple(str(layout.fit_rows(k, t.index)) for t in tasks)
        data = Dataset(files, sum(markers[(k, t.index)]["fit_rows"] for t in tasks))
        fitted = EngineFitContext(self, layout.fit_work(k), partition_rows).fit(stage, data, layout.decisions(k))
        layout.commit_fit(k, stage.fit_stats(fitted.state), fitted.state)
        shutil.rmtree(layout.fit_work(k), ignore_errors=True)

    @abstractmethod
    def map_calls(self, fn, items: list) -> list:
        """`fn(item)` for every item, in the engine's workers; results in item order."""

    @abstractmethod
    def shuffle(self, data: Dataset, keys: list[str], partitions: int, reduce, work: Path) -> list[dict]:
        """The engine's shuffle: every row with the same `keys` in one of `partitions`
        partitions, `reduce(partition, rows)` on each partition with rows; their results."""


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_global_stage(stage: GlobalStage, table: pa.Table, engine: TaskEngine, task_rows: int = 64,
                     partition_rows: int = 1_000) -> tuple[Verdict, Verdict]:
    """A global stage over one in-memory table, the way a run does it: `process`, fit rows cut
    into tasks of `task_rows`, the distributed fit on `engine` (in its session) with small
    partitions, its state through disk (JSON/NumPy), rejections routed to their tasks, `apply`.
    Returns the process verdict and the apply verdict over the rows process kept (for tests,
    notebooks and benchmarks of one stage)."""
    import tempfile

    stage.setup()
    processed = stage.process(table)
    kept, _ = processed.split(stage.name)
    parts = [kept.slice(start, task_rows) for start in range(0, kept.num_rows, task_rows)] or [kept]
    with tempfile.TemporaryDirectory() as tmp, engine.session():
        root = Path(tmp)
        files, rows = [], 0
        for task, part in enumerate(parts):
            files.append(str(root / f"fit-{task:05d}{WORK_SUFFIX}"))
            fit_rows = stage.fit_rows(with_row_ids(part, task, 0))
            write_work(fit_rows, Path(files[-1]))
            rows += fit_rows.num_rows
        data = Dataset(tuple(files), rows)
        fitted = EngineFitContext(engine, root / "work", partition_rows).fit(stage, data, root / "decisions")
        save_state(fitted.state, root / "state.json")
        state = load_state(root / "state.json")
        verdicts = [stage.apply(part, state, TaskRejections(root / "decisions" / f"task-{task:05d}{WORK_SUFFIX}")
                                .next(part.num_rows)) for task, part in enumerate(parts)]
    reasons, values = np.concatenate([v.reasons for v in verdicts]), np.concatenate([v.values for v in verdicts])
    return processed, Verdict(pa.concat_tables([v.table for v in verdicts]), reasons, values)
