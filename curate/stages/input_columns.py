"""A column the input gives in place of one a stage computes (clip_score's `score_column`,
near_dedup's `hash_column`): the stage then runs on metadata, with no image to read."""

from __future__ import annotations

import pyarrow as pa

from curate.schema import set_column
from curate.stage import Verdict


def given_column(table: pa.Table, stage: str, option: str, column: str) -> pa.ChunkedArray:
    """The input's `column`, which the stage's config `option` names; a ValueError naming both and
    the input's columns when the input has no such column."""
    if column not in table.column_names:
        raise ValueError(f"{stage}: {option} {column!r} is not a column of the input (columns: {table.column_names})")
    return table.column(column)


def with_given_column(table: pa.Table, name: str, values: pa.ChunkedArray, missing: pa.ChunkedArray, reason: str,
                      column: str) -> Verdict:
    """A verdict on `table` with `values` (read from the input's `column`) as the stage's column
    `name`, rejecting as `reason` the rows where `missing` is true (ledger value `no COLUMN`)."""
    verdict = Verdict(set_column(table, name, values))
    verdict.reject_where(missing, reason, [f"no {column}"] * table.num_rows)
    return verdict
