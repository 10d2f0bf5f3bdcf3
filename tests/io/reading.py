"""Every sample of an input read back, with each row's read failure: the reader tests' one helper."""

from __future__ import annotations

import pyarrow as pa

from curate.io.readers.contract import ReadLimits
from curate.io.readers.tasks import plan_inputs, read_task


def read_all(path, limits: ReadLimits = ReadLimits(), batch_size: int = 8) -> tuple[pa.Table, list, list]:
    """The input's samples as one table (batches that type their .json differently promoted), and
    each row's failure reason and ledger value (None: read whole), from batches of `batch_size`."""
    batches = [batch for task in plan_inputs([str(path)]) for batch in read_task(task, batch_size, limits)]
    reasons, values = [], []
    for batch in batches:
        row_reasons, row_values = [None] * batch.table.num_rows, [None] * batch.table.num_rows
        for failure in batch.failures.to_pylist():
            row_reasons[failure["position"]], row_values[failure["position"]] = failure["reason"], failure["value"]
        reasons += row_reasons
        values += row_values
    return pa.concat_tables((b.table for b in batches), promote_options="permissive"), reasons, values
