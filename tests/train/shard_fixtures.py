"""Training shards as `curate run` writes them, for the streaming loader's tests."""

from pathlib import Path

import pyarrow as pa

from curate.io.writers import PartWriter


def write_shards(folder: Path, table: pa.Table, per_shard: int) -> Path:
    """`table` as curate run writes it: parquet/part-NNNNN.parquet and shards/part-NNNNN.tar, `per_shard` rows each."""
    for number, start in enumerate(range(0, table.num_rows, per_shard)):
        name = f"part-{number:05d}"
        with PartWriter(folder / "parquet" / f"{name}.parquet", folder / "shards" / f"{name}.tar") as writer:
            writer.write(table.slice(start, per_shard))
    return folder
