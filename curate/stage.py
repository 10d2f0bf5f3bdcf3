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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from curate.schema import LEDGER_SCHEMA


class StageConfig(BaseModel):
    """Base of every stage's typed parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def written_paths(self) -> list[str]:
        """Paths outside the run's output that the stage writes (a cache, like an embedding
        store): not inputs, so a run's fingerprint leaves them out."""
        return []


class Verdict:
    """A stage's answer for a batch: the batch with the stage's columns, and a reason per row.

    `reasons[i]` is None when row i is kept; otherwise a short reason code, with
    `values[i]` the offending value as text (the ledger's `value` column). Both are NumPy
    object arrays of the batch's length (a list given to the constructor is converted), to read;
    stages mark rows one at a time (`reject`) or a whole mask at once (`reject_where`, for
    columnar stages), which keep the kept mask in step; either way the first reason a row gets
    is the one it keeps.
    """

    def __init__(self, table: pa.Table, reasons=None, values=None):
        n = table.num_rows
        self.table = table
        self.reasons = _objects(reasons, n)
        self.values = _objects(values, n)
        if len(self.reasons) != n or len(self.values) != n:
            raise ValueError(f"verdict has {len(self.reasons)} reasons and {len(self.values)} values for {n} rows")
        self._kept = np.ones(n, bool) if reasons is None else np.equal(self.reasons, None).astype(bool)

    @classmethod
    def rejecting(cls, table: pa.Table, rejected: pa.Table | None = None) -> Verdict:
        """A verdict on `table` that rejects the rows `rejected` names (columns position, reason and
        value: a reader's failures, a fit's decisions on this batch); a row named twice keeps its
        first reason."""
        verdict = cls(table)
        if rejected is None or not rejected.num_rows:
            return verdict
        rows, first = np.unique(rejected.column("position").to_numpy(), return_index=True)
        verdict.reasons[rows] = rejected.column("reason").to_numpy(zero_copy_only=False)[first]
        verdict.values[rows] = rejected.column("value").to_numpy(zero_copy_only=False)[first]
        verdict._kept[rows] = False
        return verdict

    def kept_mask(self) -> np.ndarray:
        """True where no check has rejected the row (yet); read-only (mark rows with `reject`)."""
        view = self._kept.view()
        view.flags.writeable = False
        return view

    def reject(self, row: int, reason: str, value: Any = None) -> None:
        """Mark `row` rejected unless an earlier check of the same stage already did."""
        if self._kept[row]:
            self._kept[row] = False
            self.reasons[row] = reason
            self.values[row] = None if value is None else str(value)

    def reject_where(self, mask, reason: str, values=None) -> None:
        """Reject every row where `mask` (a boolean NumPy or Arrow array; nulls count as false)
        is true and no earlier check rejected it; `values` (an Arrow or NumPy array or a list of
        the batch's length, or None) gives each row's ledger value."""
        if isinstance(mask, (pa.Array, pa.ChunkedArray)):
            mask = mask.fill_null(False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(np.asarray(mask, bool) & self.kept_mask())
        if not len(rows):
            return
        self.reasons[rows] = reason
        self._kept[rows] = False
        if values is not None:
            self.values[rows] = _as_text(values, rows)

    def split(self, stage: str) -> tuple[pa.Table, pa.Table]:
        """Kept rows, and ledger rows (uid, stage, reason, value) for the rejected ones."""
        rejected = ~self.kept_mask()
        if not rejected.any():
            return self.table, LEDGER_SCHEMA.empty_table()
        rows = pa.array(np.flatnonzero(rejected))
        uids = self.table.column("uid").take(rows)
        ledger = pa.Table.from_arrays(
            [
                pc.cast(uids, pa.string()),
                pa.nulls(len(rows), pa.string()).fill_null(stage),
                pa.array(self.reasons[rejected], pa.string()),
                pa.array(self.values[rejected], pa.string()),
            ],
            schema=LEDGER_SCHEMA,
        )
        return self.table.filter(pa.array(~rejected)), ledger


def reason_counts(ledger: pa.Table) -> Counter:
    """How many rows of a ledger table (Verdict.split's) were rejected for each reason."""
    counts = pc.value_counts(ledger.column("reason"))
    return Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


def fixed_decimals(values: np.ndarray, decimals: int) -> pa.Array:
    """`values` as text with `decimals` digits after the point (f"{v:.{decimals}f}"), in bulk."""
    scaled = np.round(np.abs(np.asarray(values, np.float64)) * 10**decimals).astype(np.int64)
    whole = pc.cast(pa.array(scaled // 10**decimals), pa.string())
    text = whole if not decimals else pc.binary_join_element_wise(
        whole, pc.utf8_lpad(pc.cast(pa.array(scaled % 10**decimals), pa.string()), decimals, "0"), ".")
    negative = (np.asarray(values) < 0) & (scaled > 0)
    return pc.if_else(pa.array(negative), pc.binary_join_element_wise("-", text, ""), text)


def _objects(items, n: int) -> np.ndarray:
    """A NumPy object array of `items` (None: n Nones)."""
    if items is None:
        return np.full(n, None, object)
    out = np.empty(len(items), object)
    out[:] = items
    return out


def _as_text(values, rows: np.ndarray) -> np.ndarray:
    """The ledger text of `values` at `rows`: None stays None, anything else becomes str."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        values = pa.array(values)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return pc.cast(values.take(pa.array(rows)), pa.string()).to_numpy(zero_copy_only=False)
    picked = values[rows] if isinstance(values, np.ndarray) else [values[i] for i in rows.tolist()]
    return np.array([None if v is None else str(v) for v in picked], object)


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

    def setup(self) -> None:  # noqa: B027 - an optional hook: most stages load nothing
        """Load models or other per-worker resources; called once before the first batch."""

    def cheap_process(self) -> bool:
        """Whether `process` costs about as little as reading its rows back (columnar rules over
        columns the rows have: no model, no decoding, no download). A middle pass made only of such
        steps stores no output: the pass after it recomputes them on what it reads (default: no)."""
        return False

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the stage's docstring, on one line."""
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


class MapStage(Stage):
    """A pure function of a batch: adds columns, rejects rows with a reason."""

    @abstractmethod
    def process(self, table: pa.Table) -> Verdict:
        """Return the batch with this stage's columns and a verdict per row."""


ROW_COLUMN = "_row"  # a fit row's id: task index << 32 | position of the row in the task's pass output
TASK_SHIFT = 32
POSITION_MASK = (1 << TASK_SHIFT) - 1  # a row id's position part


@dataclass(frozen=True)
class Dataset:
    """A distributed table: work files (Arrow IPC, curate.io.work) with their row counts, read and
    written by workers."""

    files: tuple[str, ...]
    rows: int

    def __len__(self) -> int:
        return self.rows


@dataclass
class Fitted:
    """What a global stage's fit found: a small `state` every apply task reads (thresholds,
    centroids, per-entry probabilities: NumPy arrays and JSON values, never pickles), and the
    `rejected` rows as a Dataset of (_row, reason, value) that engines route to each row's task."""

    state: dict[str, Any] = field(default_factory=dict)
    rejected: Dataset | None = None


REJECTED_SCHEMA = pa.schema([(ROW_COLUMN, pa.int64()), ("reason", pa.string()), ("value", pa.string())])


class FitContext(ABC):
    """The distributed operations a global stage's fit composes; every engine provides them with
    its own workers and its own shuffle, over Datasets of narrow rows (never image bytes).

    Functions handed to these operations run in workers: they must be picklable (module-level
    functions, bound methods of a stage, `functools.partial` of those)."""

    @abstractmethod
    def aggregate(self, data: Dataset, partial: Callable[[pa.Table], Any], merge: Callable[[list], Any]) -> Any:
        """`merge` of `partial` over every batch of `data`; partial states must be small (a
        histogram, counts, a bounded sample), since the driver merges them. `merge` must be
        associative and order-free."""

    @abstractmethod
    def map(self, data: Dataset, fn: Callable[[pa.Table], pa.Table], name: str) -> Dataset:
        """`fn` over each batch of `data` (rows may be dropped or added; the schema must be fixed)."""

    @abstractmethod
    def group(self, data: Dataset, keys: list[str], decide: Callable[[pa.Table], pa.Table], name: str) -> Dataset:
        """Shuffle `data` by the int64 columns `keys` so that every row of a key meets in one
        partition; `decide` runs on each partition (whole groups, in no particular order) and its
        output rows form the result. Partitions are bounded in size by the engine, not by the pool:
        the largest group is the only bound."""

    @abstractmethod
    def collect(self, data: Dataset) -> pa.Table:
        """Read a Dataset known to be small (a sample, a centroid table) into the driver."""


class GlobalStage(Stage):
    """A stage that needs the whole dataset: a distributed fit, then an apply per batch.

    Fit pass: `process` adds the columns the decision needs (a hash, a score) and may reject
    rows; `fit_rows` narrows each batch of kept rows, given with their `_row` id, to what the
    decision reads (default: uid, `fit_columns` and `_row`; it may drop rows the decision
    ignores), and the engine writes them as a Dataset. `fit`
    composes the context's aggregate / map / group operations over it (statistics merged on the
    driver, keyed decisions by the engine's shuffle) and returns a `Fitted`: a small state and
    the rejected rows. Apply pass: `apply` decides each batch given the state and the rejections
    of its rows. No process ever holds the pool's keys; results must not depend on the engine,
    the worker count or how the data is partitioned.
    """

    fit_columns: ClassVar[tuple[str, ...]] = ()

    def process(self, table: pa.Table) -> Verdict:
        """Compute the columns the fit phase needs; keeps every row by default."""
        return Verdict(table)

    def cheap_process(self) -> bool:
        """See Stage.cheap_process (default: when `process` keeps the batch as it is)."""
        return type(self).process is GlobalStage.process

    def fit_rows(self, table: pa.Table) -> pa.Table:
        """The narrow rows the fit reads, each with its `_row` (default: uid, fit_columns and _row)."""
        return table.select(["uid", *self.fit_columns, ROW_COLUMN])

    @abstractmethod
    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        """Decide over the whole Dataset of fit rows (each with its `_row` id)."""

    def fit_stats(self, state: dict[str, Any]) -> dict:
        """A small JSON-able summary of the fitted state, for stats.json (`fits`) and the report;
        made once, by the driver, so it is the same on every engine (default: none)."""
        return {}

    def apply(self, table: pa.Table, state: dict[str, Any], rejected: pa.Table | None = None) -> Verdict:
        """Decide each row of a batch: by default reject the rows the fit named. `rejected` holds
        (position in this batch, reason, value) for this batch's rows."""
        return Verdict.rejecting(table, rejected)


def rejections(rows: pa.Array | np.ndarray, reason: str | pa.Array, values: pa.Array | list | None = None) -> pa.Table:
    """A table of rejected fit rows (REJECTED_SCHEMA) for a stage's `fit` to return."""
    rows = pa.array(rows, pa.int64())
    reasons = pa.repeat(pa.scalar(reason, pa.string()), len(rows)) if isinstance(reason, str) else reason
    values = pa.nulls(len(rows), pa.string()) if values is None else pa.array(values, pa.string())
    return pa.Table.from_arrays([rows, reasons, values], schema=REJECTED_SCHEMA)


def shared_rows(values: np.ndarray) -> np.ndarray:
    """Positions of the rows whose value another row has too, grouped by value. Keyed fits sort
    only these exactly (by every key column, a uid): the rows of a random 64-bit key half are
    almost all unique, and one unstable integer sort costs a fifth of a stable one."""
    order = np.argsort(values)
    ordered = values[order]
    ties = ordered[1:] == ordered[:-1]
    return order[np.r_[ties, False] | np.r_[False, ties]] if len(values) else order
