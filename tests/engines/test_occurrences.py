"""Uids curate makes for input without uids are numbered per occurrence of their (url, text) pair
over the whole input (issue 18): the same pair in two row groups, two Parquet files or two tars
gives distinct uids, the same on every engine, worker count and partitioning, and a pair that
occurs once keeps md5(url, text)."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.engines import LocalEngine, RayEngine, SparkEngine
from curate.engines.occurrences import count_repeats, task_repeats
from curate.io.readers.contract import ReadLimits
from curate.io.readers.tasks import plan_inputs, read_task
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from curate.schema import make_uid, numbered_uid
from tests.engines.helpers import assert_same_output, read_output

# a.parquet (row groups of 4) rows 2 and 5, b.parquet row 2, repeat a's row 1; b's row 7 repeats a's row 9
PARQUET_REPEATS = {("a", 2): ("a", 1), ("a", 5): ("a", 1), ("b", 2): ("a", 1), ("b", 7): ("a", 9)}


def parquet_inputs(root, pool_table):
    """Two uid-less Parquet files of pool rows, some rows repeating another row's url and text (in
    the same row group, another row group, the other file); returns the folder and its samples'
    (url, text) in input order."""
    folder = root / "pq"
    folder.mkdir(parents=True)
    rows = {"a": pool_table.slice(0, 10), "b": pool_table.slice(10, 10)}
    pairs = {(name, i): (table["url"][i].as_py(), table["text"][i].as_py())
             for name, table in rows.items() for i in range(table.num_rows)}
    pairs |= {place: pairs[source] for place, source in PARQUET_REPEATS.items()}
    for name, table in rows.items():
        urls = [pairs[(name, i)][0] for i in range(table.num_rows)]
        texts = [pairs[(name, i)][1] for i in range(table.num_rows)]
        out = pa.table({"url": urls, "text": texts, "image": table["image"]})
        pq.write_table(out, folder / f"{name}.parquet", row_group_size=4)
    return folder, [pairs[(name, i)] for name in "ab" for i in range(10)]


def tar_inputs(root, pool_table):
    """Two tars of 5 samples each, keyed 000000..000004 in both, .json without uids: key 000000 has
    the same caption and no url in both (its uid is made of key and caption), t1's 000004 and
    t2's 000003 repeat t1's 000001 url and caption. Returns the folder and the samples' uid
    sources (url, else key, and caption) in input order."""
    folder = root / "tars"
    folder.mkdir(parents=True)
    sources = []
    for t, offset in (("t1", 20), ("t2", 25)):
        with tarfile.open(folder / f"{t}.tar", "w") as tar:
            for i in range(5):
                row = offset + i
                url, text = pool_table["url"][row].as_py(), pool_table["text"][row].as_py()
                if i == 0:
                    url, text = None, "the same caption"
                if (t, i) in (("t1", 4), ("t2", 3)):
                    url, text = pool_table["url"][21].as_py(), pool_table["text"][21].as_py()
                meta = {"url": url} if url else {}  # no other fields: the Parquet inputs' columns
                for ext, data in (("jpg", pool_table["image"][row].as_py()), ("txt", text.encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                sources.append((url or f"{i:06d}", text))
    return folder, sources


def expected_uids(sources):
    """numbered_uid of each sample, its occurrence counted in input order."""
    seen = {}
    for source in sources:
        seen[source] = seen.get(source, 0) + 1
        yield numbered_uid(*source, seen[source])


PIPELINE = [{"stage": "decode"}, {"stage": "exact_dedup", "key": "url_text"}]


def run(inputs, out, engine, partition_rows=500_000):
    pipeline = parse_pipeline({"name": "t", "partition_rows": partition_rows, "stages": PIPELINE}, "t.yaml")
    return run_pipeline(pipeline, engine, [str(p) for p in inputs], out)


def all_uids(out):
    """The uids of every kept and rejected sample of a run."""
    kept = pq.read_table(out / "parquet", columns=["uid"]).column("uid").to_pylist()
    return kept + pq.read_table(out / "rejected.parquet", columns=["uid"]).column("uid").to_pylist()


def test_a_pair_repeated_across_row_groups_and_files_gets_distinct_uids(tmp_path, pool_table):
    folder, pairs = parquet_inputs(tmp_path, pool_table)
    stats = run([folder], tmp_path / "out", LocalEngine(workers=1, progress=False))
    uids = all_uids(tmp_path / "out")
    assert stats["input"] == 20 and stats["kept"] + stats["rejected"] == 20 and len(set(uids)) == 20
    assert sorted(uids) == sorted(expected_uids(pairs))
    once = [make_uid(*pair) for pair in pairs if pairs.count(pair) == 1]
    assert len(once) == 14 and set(once) <= set(uids)  # a pair that occurs once keeps md5(url, text)
    assert make_uid(*pairs[1]) in uids  # the first of a repeated pair too
    # exact_dedup sees 4 samples of a's row 1 pair and 2 of row 9's: 4 duplicates, each naming its kept uid
    ledger = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pylist()
    groups = [[numbered_uid(*pairs[1], k) for k in range(1, 5)], [numbered_uid(*pairs[9], k) for k in (1, 2)]]
    assert sorted((r["uid"], r["value"]) for r in ledger if r["reason"] == "duplicate") == sorted(
        (uid, min(group)) for group in groups for uid in group if uid != min(group))


def test_two_tars_with_a_repeated_pair_get_distinct_uids(tmp_path, pool_table):
    folder, sources = tar_inputs(tmp_path, pool_table)
    stats = run([folder], tmp_path / "out", LocalEngine(workers=2, progress=False))
    uids = all_uids(tmp_path / "out")
    assert stats["input"] == 10 and stats["kept"] + stats["rejected"] == 10 and len(set(uids)) == 10
    assert sorted(uids) == sorted(expected_uids(sources))
    assert make_uid("000000", "the same caption") in uids  # the first keeps md5(key, caption)


def test_the_uids_do_not_depend_on_workers_or_partitions(tmp_path, pool_table):
    inputs = [parquet_inputs(tmp_path, pool_table)[0], tar_inputs(tmp_path, pool_table)[0]]
    one = run(inputs, tmp_path / "one", LocalEngine(workers=1, progress=False))
    two = run(inputs, tmp_path / "two", LocalEngine(workers=2, progress=False), partition_rows=2)
    assert one["input"] == 30 and len(set(all_uids(tmp_path / "one"))) == 30
    assert_same_output(read_output(tmp_path / "two"), read_output(tmp_path / "one"))
    assert two["kept"] == one["kept"]


def test_the_count_is_exact_over_many_partitions_and_reused_on_resume(tmp_path, pool_table):
    folder, pairs = parquet_inputs(tmp_path, pool_table)
    tasks = plan_inputs([str(folder)])
    counted = {}
    for partition_rows in (1, 1000):  # a partition per made uid, or one per worker
        engine, work = LocalEngine(workers=2, progress=False), tmp_path / f"p{partition_rows}"
        with engine.session():
            count_repeats(engine, tasks, ReadLimits(), work / "work", partition_rows, work / "repeats",
                          work / "counted.json")
        counted[partition_rows] = {t.index: task_repeats(work / "repeats", t.index).to_pylist() for t in tasks}
        assert json.loads((work / "counted.json").read_text()) == {"tasks": 6, "made_uids": 20, "repeats": 4}
    # a's row groups [0-3] [4-7] [8-9], b's [0-3] [4-7] [8-9]: (task, position) -> occurrence
    assert counted[1] == counted[1000] == {0: [{"position": 2, "occurrence": 2}], 1: [{"position": 1, "occurrence": 3}],
                                           2: [], 3: [{"position": 2, "occurrence": 4}],
                                           4: [{"position": 3, "occurrence": 2}], 5: []}
    (tmp_path / "p1" / "repeats" / "task-00000.arrow").unlink()  # a marked count is not redone
    with LocalEngine(workers=1, progress=False).session():
        count_repeats(LocalEngine(workers=1, progress=False), tasks, ReadLimits(), tmp_path / "w", 1,
                      tmp_path / "p1" / "repeats", tmp_path / "p1" / "counted.json")
    assert not (tmp_path / "p1" / "repeats" / "task-00000.arrow").exists()


def test_a_read_outside_a_run_numbers_repeats_within_the_task(tmp_path, pool_table):
    folder, sources = tar_inputs(tmp_path, pool_table)
    task = plan_inputs([str(folder)])[0]
    uids = [u for v in read_task(task, 2) for u in v.table.column("uid").to_pylist()]  # batches of 2
    assert uids == list(expected_uids(sources[:5]))
    repeats = pa.table({"position": pa.array([4], pa.int64()), "occurrence": pa.array([7], pa.int64())})
    uids = [u for v in read_task(task, 2, ReadLimits(), repeats) for u in v.table.column("uid").to_pylist()]
    assert uids[4] == numbered_uid(*sources[4], 7) and uids[:4] == [make_uid(*s) for s in sources[:4]]


@pytest.mark.slow  # a Ray or Spark cluster start-up each
@pytest.mark.distributed
@pytest.mark.parametrize("make", [lambda: RayEngine(workers=2, progress=False),
                                  lambda: SparkEngine(workers=2, progress=False)], ids=["ray", "spark"])
def test_ray_and_spark_make_the_same_uids(tmp_path, pool_table, make):
    inputs = [parquet_inputs(tmp_path, pool_table)[0], tar_inputs(tmp_path, pool_table)[0]]
    run(inputs, tmp_path / "local", LocalEngine(workers=1, progress=False))
    run(inputs, tmp_path / "cluster", make(), partition_rows=2)
    assert len(set(all_uids(tmp_path / "cluster"))) == 30
    assert_same_output(read_output(tmp_path / "cluster"), read_output(tmp_path / "local"))
