"""The run's streaming assembly: uid parts merged k ways equal one sort of everything, repeats are
found across and within parts, and uid sorting equals NumPy's structured sort."""

import numpy as np

import curate.io.assembly as assembly
from curate.schema import UID_DTYPE


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


def test_sort_uids_equals_the_structured_sort_with_ties_and_runs():
    rng = np.random.default_rng(2)
    values = np.zeros(20_000, UID_DTYPE)
    values["f0"] = rng.integers(0, 300, len(values))
    values["f1"] = rng.integers(0, 2**64 - 1, len(values), dtype=np.uint64)
    runs = np.concatenate([np.sort(values[k::5]) for k in range(5)])  # the merge's input: sorted runs
    for pairs in (values, runs, values[:1], values[:0]):
        assert np.array_equal(assembly.sort_uids(pairs), np.sort(pairs))


def test_many_parts_merge_in_runs_with_few_open_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(assembly, "MERGE_BUFFER", 1000)
    monkeypatch.setattr(assembly, "MERGE_FAN_IN", 3)  # 11 parts: runs of 3, runs of those, then one merge
    opened, most = [], [0]
    original = assembly._SortedPart

    class CountedPart(original):
        def __init__(self, path):
            super().__init__(path)
            opened.append(self)
            most[0] = max(most[0], sum(not p.handle.closed for p in opened))

    monkeypatch.setattr(assembly, "_SortedPart", CountedPart)
    parts, arrays = random_parts(tmp_path, np.random.default_rng(3), count=11)
    assert assembly.merge_uids(parts, tmp_path / "uids.npy") == sum(len(a) for a in arrays)
    assert np.array_equal(np.load(tmp_path / "uids.npy"), np.sort(np.concatenate(arrays)))
    assert most[0] <= 3
    assembly.write_sorted_uids(arrays[9][:4], tmp_path / "again.npy")
    assert assembly.repeated_uids(parts + [tmp_path / "again.npy"])[0] == 4
    assert not list(tmp_path.glob(".uid-merge-*"))  # the runs are gone
