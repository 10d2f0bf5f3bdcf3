"""One task of one pass, as a worker runs it: read batch by batch, written to its own parts.

A task (a Parquet row group, a tar, a folder) is read batch by batch and written to its own
output part, so the output does not depend on how many workers run or where. A task's files
are renamed into place and then its completion marker is written (RunLayout.commit_task), so a
rerun can skip marked tasks (curate.engines.driver decides which).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.engines.layout import RunLayout
from curate.engines.occurrences import task_repeats
from curate.engines.plan import Pass, StageStats, merge_stats, replay_on_batch, run_pass_on_batch
from curate.engines.runnable import RunPipeline
from curate.io.assembly import write_sorted_uids
from curate.io.readers.contract import InputError, InputTask
from curate.io.readers.tasks import read_task
from curate.io.state import load_state
from curate.io.work import read_work, work_batches, work_schema, write_work
from curate.io.writers import PartWriter, write_table_atomic
from curate.schema import INPUT_SCHEMA, LEDGER_SCHEMA, uid_pairs
from curate.stage import POSITION_MASK, REJECTED_SCHEMA, ROW_COLUMN, TASK_SHIFT, Stage, Verdict


@dataclass(frozen=True)
class TaskJob:
    """Everything a worker needs to run one task of one pass."""

    pipeline: RunPipeline
    pass_: Pass
    task: InputTask
    layout_root: str
    state_path: str | None
    check_uids: bool  # write the task's `all` uid part for the run's final uniqueness check


_WORKER_STAGES: dict[str, list[Stage]] = {}
_WORKER_STATE: dict[tuple, dict] = {}


def stages_for(pipeline: RunPipeline) -> list[Stage]:
    """The pipeline's stages, built and set up once per worker process (per stage configuration)."""
    key = repr(pipeline.stages)
    if key not in _WORKER_STAGES:
        stages = pipeline.build_stages()
        for stage in stages:
            stage.setup()
        _WORKER_STAGES.clear()
        _WORKER_STAGES[key] = stages
    return _WORKER_STAGES[key]


def _state_for(path: str | None) -> dict[str, Any]:
    """A global stage's fitted state, loaded once per worker; a rewritten file is loaded again."""
    if path is None:
        return {}
    stat = Path(path).stat()
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _WORKER_STATE:
        if len(_WORKER_STATE) >= 4:  # a pass may replay earlier passes: it holds their states too
            _WORKER_STATE.clear()
        _WORKER_STATE[key] = load_state(Path(path))
    return _WORKER_STATE[key]


class TaskRejections:
    """The rows of one task that a fit rejected, handed out batch by batch (by position)."""

    def __init__(self, path: Path | None):
        table = read_work(path) if path is not None and path.exists() else REJECTED_SCHEMA.empty_table()
        self.positions = table.column(ROW_COLUMN).to_numpy() & POSITION_MASK
        self.table = table
        self.offset = 0

    def next(self, rows: int) -> pa.Table:
        """Rejections among the next `rows` rows, with their position in that batch."""
        lo, hi = np.searchsorted(self.positions, [self.offset, self.offset + rows])
        part = self.table.slice(lo, hi - lo)
        positions = pa.array(self.positions[lo:hi] - self.offset, pa.int64())
        self.offset += rows
        return pa.table({"position": positions, "reason": part.column("reason"), "value": part.column("value")})


def _batches(job: TaskJob, layout: RunLayout):
    """The task's input for this pass: the reader on pass 0, after it the part of the last stored
    pass. An empty task yields one empty batch, so its outputs still exist with a schema."""
    batch_size = job.pipeline.settings.batch_size
    if job.pass_.source < 0:
        read = read_task(job.task, batch_size, job.pipeline.settings.read_limits(),
                         task_repeats(layout.repeats(), job.task.index))
        batches = (Verdict.rejecting(batch.table, batch.failures) for batch in read)
        empty = INPUT_SCHEMA.empty_table()
    else:
        source = layout.intermediate(job.pass_.source, job.task.index)
        batches = (Verdict(table) for table in work_batches(source, batch_size))
        empty = work_schema(source).empty_table()
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
    rejections = TaskRejections(layout.task_decisions(pass_.index - 1, task.index)) if pass_.apply is not None else None
    out_parquet = layout.kept_parquet(task.index) if pass_.is_last else layout.intermediate(pass_.index, task.index)
    out_tar = layout.kept_tar(task.index) if pass_.is_last and "webdataset" in job.pipeline.settings.outputs else None
    replays = [(p, _state_for(str(layout.state(p.index - 1))),
                TaskRejections(layout.task_decisions(p.index - 1, task.index))) for p in pass_.replays]
    stats: list[dict[str, StageStats]] = []
    ledgers, fit_parts, rows_in, rows_out, kept_uids = [], [], 0, 0, []
    writer = PartWriter(out_parquet, out_tar) if pass_.stored else None
    with writer or nullcontext():
        for verdict in _batches(job, layout):
            for replayed, replayed_state, replayed_rejections in replays:
                table = verdict.table
                verdict = Verdict(replay_on_batch(stages, replayed, table, replayed_state,
                                                  replayed_rejections.next(table.num_rows)))
            rows_in += verdict.table.num_rows
            rejected = rejections.next(verdict.table.num_rows) if rejections is not None else None
            result = run_pass_on_batch(stages, pass_, verdict, state, rejected, read_step=pass_.index == 0)
            if pass_.fit is not None:
                fit_parts.append(stages[pass_.fit].fit_rows(with_row_ids(result.kept, task.index, rows_out)))
            if writer is not None:
                writer.write(result.kept)
            rows_out += result.kept.num_rows
            ledgers += result.ledger
            stats.append(result.stats)
            if pass_.is_last:
                ids = [c for c in ("uid", "parent_uid") if c in result.kept.column_names]
                kept_uids.append(result.kept.select(ids))
    ledger = pa.concat_tables(ledgers) if ledgers else LEDGER_SCHEMA.empty_table()
    write_table_atomic(ledger, layout.ledger_part(pass_.index, task.index))
    if fit_parts:
        write_work(pa.concat_tables(fit_parts), layout.fit_rows(pass_.index, task.index))
    if pass_.is_last:
        _write_uid_parts(layout, task.index, pass_.index, kept_uids, job.check_uids)
    marker = {"task": task.index, "rows_in": rows_in, "rows_out": rows_out,
              "fit_rows": sum(t.num_rows for t in fit_parts),
              "stats": {k: s.to_dict() for k, s in merge_stats(stats).items()}}
    return layout.commit_task(pass_.index, task.index, marker, pass_.is_last)


def with_row_ids(rows: pa.Table, task: int, start: int) -> pa.Table:
    """Rows with their `_row` id: the task in the high bits, the position in the pass's output below."""
    ids = (task << TASK_SHIFT) + start + np.arange(rows.num_rows, dtype=np.int64)
    return rows.append_column(ROW_COLUMN, pa.array(ids, pa.int64()))


def _write_uid_parts(layout: RunLayout, task: int, last_pass: int, kept: list[pa.Table], check_uids: bool) -> None:
    """The task's sorted uids: every sample it kept or rejected in any pass (for the final
    uniqueness check, when `check_uids`) and its kept input samples (not derived ones), for uids.npy."""
    if kept:
        kept_table = pa.concat_tables(kept, promote_options="default")
    else:
        kept_table = pa.table({"uid": pa.array([], pa.string())})
    if check_uids:
        rejected = [pq.read_table(path, columns=["uid"]).column("uid") for k in range(last_pass + 1)
                    if (path := layout.ledger_part(k, task)).exists()]
        columns = [kept_table.column("uid"), *rejected]
        every = pa.chunked_array([chunk.cast(pa.string()) for column in columns for chunk in column.chunks],
                                 pa.string())
        write_sorted_uids(uid_pairs(every), layout.uid_part("all", task))
    pool = kept_table
    if "parent_uid" in pool.column_names:
        pool = pool.filter(pc.is_null(pool.column("parent_uid")))
    write_sorted_uids(uid_pairs(pool.column("uid")), layout.uid_part("pool", task))
