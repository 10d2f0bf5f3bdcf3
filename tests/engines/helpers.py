"""Helpers shared by the engine tests."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def read_output(out: Path) -> dict:
    """A run's results without what may differ between equal runs (timings, engine, workers)."""
    kept = pa.concat_tables(pq.read_table(p) for p in sorted((out / "parquet").glob("*.parquet")))
    stats = json.loads((out / "stats.json").read_text())
    for key in ("elapsed_s", "samples_per_s", "workers", "engine"):
        stats.pop(key)
    return {"kept": kept.to_pylist(), "ledger": pq.read_table(out / "rejected.parquet").to_pylist(), "stats": stats,
            "tars": sorted(p.name for p in (out / "shards").glob("*.tar"))}
