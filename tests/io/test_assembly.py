"""The run's streaming assembly: uid parts merged k ways equal one sort of everything, repeats are
found across and within parts, and the ledger is concatenated row group by row group."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import curate.io.assembly as assembly
from curate.schema import LEDGER_SCHEMA, UID_DTYPE


def random_parts(tmp_path, rng, count=7):
    parts, arrays = [], []
    for i in range(count):
        n = int(rng.integers(0, 5000))
        values = np.zeros(n, UID_DTYPE)
        values["f0"], values["f1"] = rng.integers(0, 50, n), rng.integers(0, 2**63, n)  # many equal high halves
        arrays.append(values)
        parts.append(tmp_path / f"part-{i}.npy")
        assembly.write_sorted_uids(values, parts[-1])
    return parts, arrays


def test_merged_uids_equal_one_sort_with_a_small_buffer(tmp_path, monkeypatch):
    monkeypatch.setattr(assembly, "MERGE_BUFFER", 1000)  # many rounds, each part a chunk of ~140 rows
    parts, arrays = random_parts(tmp_path, np.random.default_rng(0))
    parts.append(tmp_path / "empty.npy")
    assembly.write_sorted_uids(np.zeros(0, UID_DTYPE), parts[-1])
    assert assembly.merge_uids(parts, tmp_path / "uids.npy") == sum(len(a) for a in arrays)
    assert np.array_equal(np.load(tmp_path / "uids.npy"), np.sort(np.concatenate(arrays)))
    assert assembly.repeated_uids(parts) == (0, [])


def test_repeated_uids_are_counted_across_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(assembly, "MERGE_BUFFER", 1000)
    parts, arrays = random_parts(tmp_path, np.random.default_rng(1))
    assembly.write_sorted_uids(arrays[2][:5], tmp_path / "again.npy")
    count, examples = assembly.repeated_uids(parts + [tmp_path / "again.npy"])
    assert count == 5
    assert examples == [f"{int(v[0]):016x}{int(v[1]):016x}" for v in np.sort(arrays[2][:5])[:3]]


def test_ledger_parts_concatenate_in_order(tmp_path):
    parts = []
    for i in range(3):
        table = pa.table({"uid": [f"{i}-{k}" for k in range(4 * i)], "stage": ["s"] * (4 * i),
                          "reason": ["r"] * (4 * i), "value": [None] * (4 * i)}, schema=LEDGER_SCHEMA)
        parts.append(tmp_path / f"ledger-{i}.parquet")
        pq.write_table(table, parts[-1], row_group_size=3)
    assert assembly.concat_parquet(parts, tmp_path / "all.parquet", LEDGER_SCHEMA) == 12
    assert pq.read_table(tmp_path / "all.parquet")["uid"].to_pylist() == [f"{i}-{k}" for i in range(3) for k in range(4 * i)]
