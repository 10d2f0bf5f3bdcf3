"""Helpers shared by the benchmarks."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def copy_pool(pool: Path, copies: int, out: Path) -> Path:
    """`copies` copies of the pool's Parquet files, each row with a new uid."""
    out.mkdir()
    for copy in range(copies):
        for path in sorted(pool.glob("*.parquet")):
            table = pq.read_table(path)
            uids = [f"{copy:02x}{u[2:]}" for u in table.column("uid").to_pylist()]
            table = table.set_column(table.schema.get_field_index("uid"), "uid", pa.array(uids, pa.string()))
            pq.write_table(table, out / f"{copy:02d}-{path.name}", row_group_size=250)
    return out
