"""What every engine shares: cutting a pipeline into passes, running a pass over a batch,
per-stage statistics, and the output layout with its final assembly.

A pipeline is cut at its global stages. Pass k applies the state of the global stage that
ended pass k-1 (if any), runs the map stages that follow, and ends with the `process` and
`partial` of the next global stage (if any). Engines decide where batches run; this module
decides what happens to a batch, so all engines give the same answer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.readers import READ_STAGE
from curate.io.writers import write_json_atomic, write_table_atomic, write_uids
from curate.schema import LEDGER_SCHEMA
from curate.stage import GlobalStage, Stage, Verdict


@dataclass(frozen=True)
class Pass:
    """One sweep over the data: apply a global state, run map stages, fit a global stage."""

    index: int
    apply: int | None  # stage index whose fitted state is applied first
    maps: tuple[int, ...]  # map stage indices, in order
    fit: int | None  # global stage index whose process + partial end the pass

    @property
    def is_last(self) -> bool:
        return self.fit is None


def plan_passes(stages: list[Stage]) -> list[Pass]:
    """Cut the stage list at global stages."""
    passes: list[Pass] = []
    apply, maps = None, []
    for i, stage in enumerate(stages):
        if isinstance(stage, GlobalStage):
            passes.append(Pass(len(passes), apply, tuple(maps), i))
            apply, maps = i, []
        else:
            maps.append(i)
    passes.append(Pass(len(passes), apply, tuple(maps), None))
    return passes


@dataclass
class StageStats:
    """Rows in and out of one stage and the count of each rejection reason; a stage that derives
    extra samples from its input (one per extra caption, say) has more rows out than in minus rejected."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, other: "StageStats") -> None:
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
    def from_dict(cls, data: dict) -> "StageStats":
        return cls(data["name"], data["in"], data["out"], Counter(data["reasons"]))


@dataclass
class BatchResult:
    """What a pass made of one batch: kept rows, ledger rows, per-stage stats, fit partial."""

    kept: pa.Table
    ledger: list[pa.Table]
    stats: dict[str, StageStats]
    partial: Any = None


def stage_key(index: int, stage: Stage) -> str:
    """Stable key of a stage in stats: position and name (a stage may appear twice)."""
    return f"{index}:{stage.name}"


def run_pass_on_batch(stages: list[Stage], pass_: Pass, verdict: Verdict, state: Any, read_step: bool) -> BatchResult:
    """Run one pass's stages over one batch. `read_step` marks a batch fresh from a reader,
    whose verdict may hold read failures (ledger stage 'read')."""
    ledger: list[pa.Table] = []
    stats: dict[str, StageStats] = {}

    def record(key: str, stage: Stage | None, v: Verdict, rows_in: int) -> pa.Table:
        name = stage.name if stage else READ_STAGE
        kept, rejected = v.split(name)
        made = kept.num_rows + rejected.num_rows - rows_in
        if made < 0 or made and not stage.derives_samples:
            raise RuntimeError(f"stage {key} answered {v.table.num_rows} rows for {rows_in}: every row must be kept "
                               "or rejected (only a stage that derives samples may add rows)")
        stats[key] = StageStats(name, rows_in, kept.num_rows, v.reason_counts())
        if rejected.num_rows:
            ledger.append(rejected)
        return kept

    table = record(READ_STAGE, None, verdict, verdict.table.num_rows) if read_step else verdict.table
    if pass_.apply is not None:
        stage = stages[pass_.apply]
        table = record(stage_key(pass_.apply, stage), stage, stage.apply(table, state), table.num_rows)
    for i in pass_.maps:
        table = record(stage_key(i, stages[i]), stages[i], stages[i].process(table), table.num_rows)
    partial = None
    if pass_.fit is not None:
        stage = stages[pass_.fit]
        # the fit stage's own rejections (e.g. an unhashable image) are counted with its apply step
        table = record(stage_key(pass_.fit, stage) + ":fit", stage, stage.process(table), table.num_rows)
        partial = stage.partial(table)
    return BatchResult(table, ledger, stats, partial)


def merge_stats(parts: list[dict[str, StageStats]]) -> dict[str, StageStats]:
    """Sum per-stage stats from tasks or batches."""
    total: dict[str, StageStats] = {}
    for part in parts:
        for key, s in part.items():
            total.setdefault(key, StageStats(s.name)).add(s)
    return total


class RunLayout:
    """Where a run's outputs and its resume state live inside the output folder."""

    def __init__(self, output: str | Path):
        self.root = Path(output)
        self.shards = self.root / "shards"
        self.parquet = self.root / "parquet"
        self.rejected = self.root / "rejected.parquet"
        self.stats = self.root / "stats.json"
        self.report = self.root / "report.html"
        self.uids = self.root / "uids.npy"
        self.work = self.root / "_work"
        self.run_file = self.work / "run.json"

    def part_name(self, task: int) -> str:
        return f"part-{task:05d}"

    def kept_parquet(self, task: int) -> Path:
        return self.parquet / f"{self.part_name(task)}.parquet"

    def kept_tar(self, task: int) -> Path:
        return self.shards / f"{self.part_name(task)}.tar"

    def intermediate(self, pass_index: int, task: int) -> Path:
        return self.work / f"pass{pass_index}" / f"{self.part_name(task)}.parquet"

    def ledger_part(self, pass_index: int, task: int) -> Path:
        return self.work / "ledger" / f"pass{pass_index}-{self.part_name(task)}.parquet"

    def partial(self, pass_index: int, task: int) -> Path:
        return self.work / "partials" / f"pass{pass_index}-{self.part_name(task)}.pkl"

    def state(self, pass_index: int) -> Path:
        return self.work / f"state-pass{pass_index}.pkl"

    def fit_stats(self, pass_index: int) -> Path:
        return self.work / f"fit-pass{pass_index}.json"

    def marker(self, pass_index: int, task: int) -> Path:
        return self.work / "done" / f"pass{pass_index}-{self.part_name(task)}.json"

    def outputs(self) -> list[Path]:
        return [self.shards, self.parquet, self.rejected, self.stats, self.report, self.uids, self.work]

    def prepare(self, fingerprint: dict, overwrite: bool) -> bool:
        """Claim the output folder for this run; returns True when a finished identical run is there.

        A folder holding another run (or unrelated files) is refused unless `overwrite`; the same
        run, finished or interrupted, is reused either way.
        """
        previous = json.loads(self.run_file.read_text()) if self.run_file.exists() else None
        if previous is not None and previous["fingerprint"] == fingerprint["fingerprint"]:
            return bool(previous.get("complete"))
        occupied = self.root.exists() and any(self.root.iterdir())
        if occupied and not overwrite:
            what = "a run of a different pipeline or input" if previous else "files that are not a curate run"
            raise FileExistsError(f"{self.root} holds {what}; pass --overwrite or choose another --output")
        for path in self.outputs():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        write_json_atomic({**fingerprint, "complete": False}, self.run_file)
        return False

    def finish(self, stages: list[Stage], task_stats: list[dict[str, StageStats]], input_rows: int,
               tasks: list[int], passes: list[Pass], extra: dict) -> dict:
        """Assemble rejected.parquet, uids.npy, stats.json; check kept + rejected == input."""
        ledgers = [pq.read_table(p) for k in range(len(passes)) for t in tasks if (p := self.ledger_part(k, t)).exists()]
        ledger = pa.concat_tables(ledgers) if ledgers else LEDGER_SCHEMA.empty_table()
        write_table_atomic(ledger.cast(LEDGER_SCHEMA), self.rejected)
        kept_uids: list[str] = []
        pool_uids: list[str] = []  # kept input samples, without the samples stages derived from them
        for t in tasks:
            path = self.kept_parquet(t)
            part = pq.read_table(path, columns=[c for c in ("uid", "parent_uid") if c in pq.read_schema(path).names])
            kept_uids += part.column("uid").to_pylist()
            if "parent_uid" in part.column_names:
                part = part.filter(part.column("parent_uid").is_null())
            pool_uids += part.column("uid").to_pylist()
        everyone = kept_uids + ledger.column("uid").to_pylist()
        if len(set(everyone)) != len(everyone):
            repeated = sorted(u for u, n in Counter(everyone).items() if n > 1)
            raise ValueError(f"{len(repeated)} uid(s) occur more than once in the input (e.g. {repeated[:3]}): "
                             "uids must be unique; drop the uid column to have curate make them")
        write_uids(pool_uids, self.uids)
        totals = merge_stats(task_stats)
        derived = sum(s.derived for s in totals.values())  # samples stages made from input samples
        if len(kept_uids) + ledger.num_rows != input_rows + derived:
            raise RuntimeError(f"accounting error: {len(kept_uids)} kept + {ledger.num_rows} rejected != "
                               f"{input_rows} input rows + {derived} derived samples")
        order = [READ_STAGE] + [k for i, s in enumerate(stages) for k in (stage_key(i, s) + ":fit", stage_key(i, s))]
        stage_rows = []
        for key in order:
            if key not in totals:
                continue
            entry = totals[key].to_dict()
            entry["key"] = key
            stage_rows.append(entry)
        fit_files = {stage_key(p.fit, stages[p.fit]): self.fit_stats(p.index) for p in passes if p.fit is not None}
        fits = {key: fit for key, path in fit_files.items() if path.exists() and (fit := json.loads(path.read_text()))}
        stats = {"input": input_rows, "kept": len(kept_uids), "rejected": ledger.num_rows, "derived": derived,
                 "kept_fraction": round(len(pool_uids) / input_rows, 6) if input_rows else 0.0,
                 "stages": stage_rows, **({"fits": fits} if fits else {}), **extra}
        write_json_atomic(stats, self.stats)
        return stats

    def mark_complete(self) -> None:
        """Record the run as finished and drop intermediates (markers stay, for reruns)."""
        for sub in ("partials",) + tuple(p.name for p in self.work.glob("pass*") if p.is_dir()):
            shutil.rmtree(self.work / sub, ignore_errors=True)
        for state in self.work.glob("state-pass*.pkl"):  # a dedup state can be as large as its keys
            state.unlink()
        run = json.loads(self.run_file.read_text())
        write_json_atomic({**run, "complete": True}, self.run_file)


def _file_stamps(path: Path) -> list:
    """(path, size, mtime_ns) of a file, or of every file under a folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _named_paths(value) -> list[Path]:
    """Existing files or folders named by strings in a config value (a blocklist, eval data...)."""
    if isinstance(value, str):
        try:
            return [Path(value)] if Path(value).exists() else []
        except (OSError, ValueError):  # a regular expression or caption text, not a path
            return []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _named_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _named_paths(v)]
    return []


def fingerprint(pipeline_raw: dict, tasks: list, written: list[str] = ()) -> dict:
    """A hash of everything that determines a run's output, to detect reuse of a folder: the
    pipeline, every input file, and the files its stages read (named in their configs; paths
    the stages write, `written`, are not inputs)."""
    inputs = [[task.path, task.row_group] for task in tasks]
    named = set(_named_paths(pipeline_raw.get("stages", []))) - {Path(p) for p in written}
    paths = {Path(task.path) for task in tasks} | named
    stamps = [stamp for path in sorted(paths) for stamp in _file_stamps(path)]
    blob = json.dumps({"pipeline": pipeline_raw, "inputs": inputs, "files": stamps}, sort_keys=True, default=str)
    return {"fingerprint": hashlib.sha256(blob.encode()).hexdigest(), "pipeline": pipeline_raw.get("name")}
