"""The stage contract: map stages and global (fit, then apply) stages over Arrow tables.

A stage never drops a row silently: it returns a `Verdict` with one reason per row
(None = keep), and `Verdict.split` turns that into kept rows and rejection-ledger rows.
Engines only see this module's types; they never import a concrete stage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from curate.schema import LEDGER_SCHEMA


class StageConfig(BaseModel):
    """Base of every stage's typed parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def written_paths(self) -> list[str]:
        """Paths outside the run's output that the stage writes (a cache, like an embedding
        store): not inputs, so a run's fingerprint leaves them out."""
        return []


@dataclass
class Verdict:
    """A stage's answer for a batch: the batch with the stage's columns, and a reason per row.

    `reasons[i]` is None when row i is kept; otherwise a short reason code, with
    `values[i]` the offending value as text (the ledger's `value` column).
    """

    table: pa.Table
    reasons: list[str | None] = field(default_factory=list)
    values: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.table.num_rows
        if not self.reasons:
            self.reasons = [None] * n
        if not self.values:
            self.values = [None] * n
        if len(self.reasons) != n or len(self.values) != n:
            raise ValueError(f"verdict has {len(self.reasons)} reasons for {n} rows")

    def reject(self, row: int, reason: str, value: Any = None) -> None:
        """Mark `row` rejected unless an earlier check of the same stage already did."""
        if self.reasons[row] is None:
            self.reasons[row] = reason
            self.values[row] = None if value is None else str(value)

    def split(self, stage: str) -> tuple[pa.Table, pa.Table]:
        """Kept rows, and ledger rows (uid, stage, reason, value) for the rejected ones."""
        keep = pa.array([r is None for r in self.reasons], pa.bool_())
        rejected_rows = [i for i, r in enumerate(self.reasons) if r is not None]
        uids = self.table.column("uid").take(pa.array(rejected_rows, pa.int64()))
        ledger = pa.Table.from_arrays(
            [
                uids.cast(pa.string()),
                pa.array([stage] * len(rejected_rows), pa.string()),
                pa.array([self.reasons[i] for i in rejected_rows], pa.string()),
                pa.array([self.values[i] for i in rejected_rows], pa.string()),
            ],
            schema=LEDGER_SCHEMA,
        )
        return self.table.filter(keep), ledger

    def reason_counts(self) -> Counter:
        """How many rows were rejected for each reason."""
        return Counter(r for r in self.reasons if r is not None)


def map_rows(values: list, fn: Callable[[Any], Any]) -> tuple[list, dict[int, str]]:
    """`fn` of each value; where it raises (an undecodable image, say) the result is None and
    the row's failure message, for the ledger, is kept: a bad row is a rejection, not a crash."""
    results, failures = [], {}
    for i, value in enumerate(values):
        try:
            results.append(fn(value))
        except Exception as exc:  # noqa: BLE001 - any failure of one row is that row's rejection
            results.append(None)
            failures[i] = f"{type(exc).__name__}: {exc}"[:200]
    return results, failures


class Stage(ABC):
    """A named, configured step over batches of samples.

    Subclasses set `name`, `Config` (a StageConfig subclass), the columns they `reads`
    and `writes` (name -> Arrow type) and the rejection `reasons` they can give.
    Models are loaded in `setup`, which an engine calls once per worker; a stage that
    does so sets `uses_model`, so engines can run it in long-lived workers (Ray actors).
    A stage that adds samples derived from its input (with `parent_uid` set) sets `derives_samples`;
    any other stage answers exactly one kept-or-rejected row per input row.
    """

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[dict[str, pa.DataType]] = {}
    reasons: ClassVar[tuple[str, ...]] = ()
    uses_model: ClassVar[bool] = False
    derives_samples: ClassVar[bool] = False

    def __init__(self, config: StageConfig):
        self.config = config

    def setup(self) -> None:
        """Load models or other per-worker resources; called once before the first batch."""

    @classmethod
    def summary(cls) -> str:
        """The first line of the stage's docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0]


class MapStage(Stage):
    """A pure function of a batch: adds columns, rejects rows with a reason."""

    @abstractmethod
    def process(self, table: pa.Table) -> Verdict:
        """Return the batch with this stage's columns and a verdict per row."""


class GlobalStage(Stage):
    """A stage that needs the whole dataset, run in two phases.

    Fit: `process` adds the columns the decision needs (a hash, an embedding id) and
    `partial` folds a batch into a small partial state; `merge` combines partial states
    (from batches, tasks or workers, in any grouping) into the final state.
    Apply: `apply` decides each row of a batch given that state.
    `merge` must be associative and give the same state whatever the grouping, so
    every engine and worker count reaches the same answer.
    """

    def process(self, table: pa.Table) -> Verdict:
        """Compute the columns the fit phase needs; keeps every row by default."""
        return Verdict(table)

    @abstractmethod
    def partial(self, table: pa.Table) -> Any:
        """Summarise a batch of kept rows into a partial state."""

    @abstractmethod
    def merge(self, partials: list[Any]) -> Any:
        """Combine partial states into one."""

    def finalize(self, state: Any) -> Any:
        """Turn the fully merged state into what `apply` needs (default: unchanged)."""
        return state

    def fit_stats(self, state: Any) -> dict:
        """A small JSON-able summary of the finalized state, for stats.json (`fits`) and the
        report; made once, by the driver, so it is the same on every engine (default: none)."""
        return {}

    @abstractmethod
    def apply(self, table: pa.Table, state: Any) -> Verdict:
        """Decide each row of a batch given the finalized state."""
