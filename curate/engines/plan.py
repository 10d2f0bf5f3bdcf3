"""The pass plan and the per-batch logic every engine shares.

A pipeline is cut at its global stages. Pass k applies the decision of the global stage that
ended pass k-1 (if any), runs the map stages that follow, and ends with the `process` of the
next global stage (if any), whose narrow fit rows are written beside the pass's output.
A middle pass whose map stages and global stage's `process` are all cheap (`Stage.cheap_process`:
about as cheap as reading rows back) stores no output: the next pass reads what it read and
replays it (a DataComp recipe's dedup then top fraction rewrites the pool once less). The first
pass is always stored: the input is read once (rereading it, a caption rule's work included,
cost more than writing and reading back its output, measured with bench/scale.py). Engines
decide where batches run; this module decides what happens to a batch, so all engines give the
same answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from curate.io.readers.contract import READ_STAGE
from curate.stage import GlobalStage, Stage, Verdict, reason_counts


@dataclass(frozen=True)
class Pass:
    """One sweep over the data: apply a global state, run map stages, fit a global stage."""

    index: int
    apply: int | None  # stage index whose fitted state is applied first
    maps: tuple[int, ...]  # map stage indices, in order
    fit: int | None  # global stage index whose process + partial end the pass
    stored: bool = True  # the pass writes its output (the next pass's input, or the run's output)
    replays: tuple[Pass, ...] = ()  # the unstored passes just before this one, replayed on what it reads

    @property
    def is_last(self) -> bool:
        return self.fit is None

    @property
    def source(self) -> int:
        """The pass whose stored output this pass reads (-1: the input)."""
        return self.index - 1 - len(self.replays)


def plan_passes(stages: list[Stage]) -> list[Pass]:
    """Cut the stage list at global stages; a middle pass whose map stages and global stage's
    process are all cheap is not stored (the passes after it replay it)."""
    cuts: list[Pass] = []
    apply, maps = None, []
    for i, stage in enumerate(stages):
        if isinstance(stage, GlobalStage):
            cuts.append(Pass(len(cuts), apply, tuple(maps), i))
            apply, maps = i, []
        else:
            maps.append(i)
    cuts.append(Pass(len(cuts), apply, tuple(maps), None))
    passes: list[Pass] = []
    for cut in cuts:
        replays = tuple(passes[len(passes) - _unstored_run(passes):])
        stored = cut.index == 0 or cut.is_last or not all(stages[i].cheap_process() for i in (*cut.maps, cut.fit))
        passes.append(Pass(cut.index, cut.apply, cut.maps, cut.fit, bool(stored), replays))
    return passes


def _unstored_run(passes: list[Pass]) -> int:
    """How many passes at the end of `passes` are not stored."""
    count = 0
    for pass_ in reversed(passes):
        if pass_.stored:
            break
        count += 1
    return count


@dataclass
class StageStats:
    """Rows in and out of one stage and the count of each rejection reason; a stage that derives
    extra samples from its input (one per extra caption, say) has more rows out than in minus rejected."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, other: StageStats) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.reasons.update(other.reasons)

    @property
    def derived(self) -> int:
        return self.rows_out + sum(self.reasons.values()) - self.rows_in

    def to_dict(self) -> dict:
        derived = {"derived": self.derived} if self.derived else {}
        return {"name": self.name, "in": self.rows_in, "out": self.rows_out, "rejected": sum(self.reasons.values()),
                **derived, "reasons": dict(sorted(self.reasons.items()))}

    @classmethod
    def from_dict(cls, data: dict) -> StageStats:
        return cls(data["name"], data["in"], data["out"], Counter(data["reasons"]))


@dataclass
class BatchResult:
    """What a pass made of one batch: kept rows, ledger rows and per-stage stats."""

    kept: pa.Table
    ledger: list[pa.Table]
    stats: dict[str, StageStats]


def stage_key(index: int, stage: Stage) -> str:
    """Stable key of a stage in stats: position and name (a stage may appear twice)."""
    return f"{index}:{stage.name}"


def check_declared(key: str, stage: Stage, reasons: Counter, new_columns: set[str]) -> None:
    """Raise unless a stage's answer keeps its declared contract: every rejection reason is one of
    its `reasons` and every column it added is one of its `writes`."""
    cls = type(stage).__name__
    if set(reasons) - set(stage.reasons):
        raise RuntimeError(f"stage {key} rejected rows for {sorted(set(reasons) - set(stage.reasons))}, not in "
                           f"{cls}.reasons {sorted(stage.reasons)}: declare every reason the stage gives")
    if new_columns - set(stage.writes):
        raise RuntimeError(f"stage {key} added columns {sorted(new_columns - set(stage.writes))}, not in "
                           f"{cls}.writes {sorted(stage.writes)}: declare every column the stage writes")


def replay_on_batch(stages: list[Stage], pass_: Pass, table: pa.Table, state: dict[str, Any],
                    rejected: pa.Table | None) -> pa.Table:
    """The rows an unstored pass kept of a batch (its apply, map stages and global stage's
    process), recomputed by a later pass; the pass itself recorded their ledger and stats."""
    return run_pass_on_batch(stages, pass_, Verdict(table), state, rejected, read_step=False).kept


def run_pass_on_batch(stages: list[Stage], pass_: Pass, verdict: Verdict, state: dict[str, Any],
                      rejected: pa.Table | None, read_step: bool) -> BatchResult:
    """Run one pass's stages over one batch. `read_step` marks a batch fresh from a reader,
    whose verdict may hold read failures (ledger stage 'read'); `state` and `rejected` (rows of
    this batch by position, with reason and value) are the fit of the global stage applied first."""
    ledger: list[pa.Table] = []
    stats: dict[str, StageStats] = {}

    def record(key: str, stage: Stage | None, v: Verdict, given: pa.Table) -> pa.Table:
        name, rows_in = (stage.name if stage else READ_STAGE), given.num_rows
        kept, rejected = v.split(name)
        made = kept.num_rows + rejected.num_rows - rows_in
        if made < 0 or made and not stage.derives_samples:
            raise RuntimeError(f"stage {key} answered {v.table.num_rows} rows for {rows_in}: every row must be kept "
                               "or rejected (only a stage that derives samples may add rows)")
        counts = reason_counts(rejected)
        if stage is not None:
            check_declared(key, stage, counts, set(v.table.column_names) - set(given.column_names))
        stats[key] = StageStats(name, rows_in, kept.num_rows, counts)
        if rejected.num_rows:
            ledger.append(rejected)
        return kept

    table = record(READ_STAGE, None, verdict, verdict.table) if read_step else verdict.table
    if pass_.apply is not None:
        stage = stages[pass_.apply]
        decided = stage.apply(table, state, rejected)
        table = record(stage_key(pass_.apply, stage), stage, decided, table)
    for i in pass_.maps:
        table = record(stage_key(i, stages[i]), stages[i], stages[i].process(table), table)
    if pass_.fit is not None:
        stage = stages[pass_.fit]
        # the fit stage's own rejections (e.g. an unhashable image) are counted with its apply step
        table = record(stage_key(pass_.fit, stage) + ":fit", stage, stage.process(table), table)
    return BatchResult(table, ledger, stats)


def merge_stats(parts: list[dict[str, StageStats]]) -> dict[str, StageStats]:
    """Sum per-stage stats from tasks or batches."""
    total: dict[str, StageStats] = {}
    for part in parts:
        for key, s in part.items():
            total.setdefault(key, StageStats(s.name)).add(s)
    return total


