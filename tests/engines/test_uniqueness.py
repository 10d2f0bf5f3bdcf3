"""The input's own uids are checked on the engine before any stage runs: empty and repeated uids
are one line naming both places, found over many partitions exactly as in one, on every engine
(issue 17 item 12, issue 18 item 5)."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.engines import LocalEngine, RayEngine, SparkEngine
from curate.engines.uniqueness import check_input_uids
from curate.io.readers.contract import InputError, ReadLimits
from curate.io.readers.tasks import plan_inputs
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline


def uid_files(tmp_path, pool_table, uids_b):
    """Two Parquet inputs of pool rows: a.parquet with the pool's first 10 uids (row groups of 4),
    b.parquet with `uids_b`."""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = pool_table.select(["uid", "url", "text", "image"])
    pq.write_table(rows.slice(0, 10), folder / "a.parquet", row_group_size=4)
    part = rows.slice(10, len(uids_b))
    pq.write_table(part.set_column(0, "uid", pa.array(uids_b, pa.string())), folder / "b.parquet", row_group_size=4)
    return folder


def run(tmp_path, folder):
    pipeline = parse_pipeline({"name": "t", "stages": [{"stage": "decode"}]}, "t.yaml")
    return run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(folder)], tmp_path / "out")


def check(engine, folder, tmp_path, partition_rows=1000):
    with engine.session():
        check_input_uids(engine, plan_inputs([str(folder)]), ReadLimits(), tmp_path / "work", partition_rows,
                         tmp_path / "checked.json")


def test_repeated_uids_are_found_before_any_stage_with_one_line(tmp_path, pool_table):
    uids = pool_table.column("uid").to_pylist()
    folder = uid_files(tmp_path, pool_table, uids[10:15] + [uids[3]] + uids[16:20])
    with pytest.raises(InputError) as err:
        run(tmp_path, folder)
    message = str(err.value)
    assert message == (f"1 row(s) give a uid that another row gives too, e.g. {uids[3]!r} at {folder / 'a.parquet'} "
                       f"(row group 0) row 3 and {folder / 'b.parquet'} (row group 1) row 1: uids must be unique; "
                       "drop the uid column to have curate make them")
    out = tmp_path / "out"
    assert "\n" not in message and not (out / "parquet").exists() and not any((out / "rejected.parquet").glob("*"))


def test_the_check_is_exact_over_many_partitions(tmp_path, pool_table):
    uids = pool_table.column("uid").to_pylist()
    folder = uid_files(tmp_path, pool_table, [uids[0], uids[11], uids[12], uids[9], uids[0]])
    for partition_rows in (2, 1000):  # 8 partitions of ~2 uids each, or one per worker
        with pytest.raises(InputError, match=r"^3 row\(s\) give a uid that another row gives too, e.g. "):
            check(LocalEngine(workers=2, progress=False), folder, tmp_path / str(partition_rows), partition_rows)
    unique = tmp_path / "unique"
    unique.mkdir()
    pq.write_table(pool_table.select(["uid", "text", "image"]).slice(0, 40), unique / "u.parquet", row_group_size=7)
    check(LocalEngine(workers=2, progress=False), unique, tmp_path / "ok", partition_rows=3)
    assert (tmp_path / "ok" / "checked.json").exists()  # a resumed run skips the check


def test_empty_uids_are_found_before_any_stage(tmp_path, pool_table):
    uids = pool_table.column("uid").to_pylist()
    folder = uid_files(tmp_path, pool_table, uids[10:16] + [""] + uids[17:20])
    with pytest.raises(InputError, match=rf"^{folder / 'b.parquet'} \(row group 1\) row 2: empty uid \(1 row\(s\) "):
        run(tmp_path, folder)
    assert not (tmp_path / "out" / "parquet").exists()
    (tmp_path / "urls.csv").write_text("uid,url,caption\nu1,http://x.test/1.jpg,a cat\n,http://x.test/2.jpg,a dog\n")
    with pytest.raises(InputError, match=r"urls\.csv row 1: empty uid"):  # a URL list's uids the same way
        check(LocalEngine(workers=1, progress=False), tmp_path / "urls.csv", tmp_path / "csv")


def write_tar(path, pool_table, rows, uids):
    """A WebDataset tar of pool `rows` (image, .txt, .json with the given uid, none where it is None)."""
    with tarfile.open(path, "w") as tar:
        for key, (row, uid) in enumerate(zip(rows, uids)):
            meta = {"url": pool_table["url"][row].as_py(), **({"uid": uid} if uid is not None else {})}
            members = {"jpg": pool_table["image"][row].as_py(), "txt": pool_table["text"][row].as_py().encode(),
                       "json": json.dumps(meta).encode()}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_uid_two_tars_give_is_found_before_any_stage(tmp_path, pool_table):
    uids = pool_table.column("uid").to_pylist()
    folder = tmp_path / "tars"
    folder.mkdir()
    write_tar(folder / "t1.tar", pool_table, range(0, 4), [uids[0], None, uids[2], uids[3]])
    write_tar(folder / "t2.tar", pool_table, range(4, 8), [None, uids[5], uids[2], None])
    with pytest.raises(InputError) as err:
        run(tmp_path, folder)
    assert str(err.value) == (f"1 row(s) give a uid that another row gives too, e.g. {uids[2]!r} at "
                              f"{folder / 't1.tar'} sample 2 and {folder / 't2.tar'} sample 2: uids must be unique; "
                              "drop the uid column (the .json uid field of a tar's samples) to have curate make them")
    assert not (tmp_path / "out" / "parquet").exists()
    write_tar(folder / "t2.tar", pool_table, range(4, 8), [None, uids[5], uids[6], None])  # samples without one
    stats = run(tmp_path / "again", folder)  # are given made uids; every uid is unique now
    assert (stats["input"], stats["kept"]) == (8, 8)


@pytest.mark.slow  # about 3 minutes of cluster start-up an engine; every parity run checks its input's uids too
@pytest.mark.distributed
@pytest.mark.parametrize("make", [lambda: RayEngine(workers=2, progress=False),
                                  lambda: SparkEngine(workers=2, progress=False)], ids=["ray", "spark"])
def test_ray_and_spark_find_the_same_repeats(tmp_path, pool_table, make):
    uids = pool_table.column("uid").to_pylist()
    folder = uid_files(tmp_path, pool_table, [uids[0], uids[11], uids[12], uids[9], uids[0]])
    with pytest.raises(InputError, match=r"^3 row\(s\) give a uid that another row gives too, e.g. "):
        check(make(), folder, tmp_path, partition_rows=2)
