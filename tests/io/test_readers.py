"""Inputs: Parquet, WebDataset tars (also cut off), img2dataset folders, and clear errors."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.io.readers.contract import InputError, ReadBatch
from curate.io.readers.tasks import plan_inputs
from tests.io.reading import read_all


def write_tar(path, samples, cut_at=None):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    path.write_bytes(data[:cut_at] if cut_at else data)


def samples(pool_table, n):
    rows = pool_table.slice(0, n).to_pylist()
    return [(f"{i:09d}", {"jpg": r["image"], "txt": (r["text"] or "").encode(),
                          "json": json.dumps({"url": r["url"], "uid": r["uid"]}).encode()}) for i, r in enumerate(rows)]


def test_webdataset_tar_input(tmp_path, pool_table):
    write_tar(tmp_path / "00000.tar", samples(pool_table, 10))
    table, reasons, _ = read_all(tmp_path)
    assert table.column("uid").to_pylist() == pool_table.column("uid").to_pylist()[:10]
    assert table.column("image").to_pylist() == pool_table.column("image").to_pylist()[:10]
    assert reasons == [None] * 10


def test_cut_off_tar_loses_nothing(tmp_path, pool_table):
    full = tmp_path / "full.tar"
    write_tar(full, samples(pool_table, 6))
    cut = tmp_path / "cut"
    cut.mkdir()
    write_tar(cut / "00000.tar", samples(pool_table, 6), cut_at=int(full.stat().st_size * 0.6))
    table, reasons, _ = read_all(cut)
    assert reasons[-1] == "truncated_shard" and reasons[:-1] == [None] * (len(reasons) - 1)
    uids = table.column("uid").to_pylist()
    assert uids[:-1] == pool_table.column("uid").to_pylist()[: len(reasons) - 1]
    assert len(reasons) >= 3 and len(uids[-1]) == 32  # the cut sample, its json unread, gets a uid from its key


def test_img2dataset_files_and_parquet_layouts(tmp_path, pool_table):
    files = tmp_path / "files" / "00000"
    files.mkdir(parents=True)
    for i, row in enumerate(pool_table.slice(0, 4).to_pylist()):
        (files / f"{i:09d}.jpg").write_bytes(row["image"])
        (files / f"{i:09d}.txt").write_text(row["text"] or "")
        (files / f"{i:09d}.json").write_text(json.dumps({"url": row["url"], "caption": row["text"]}))
    table, _, _ = read_all(tmp_path / "files")
    assert table.column("text").to_pylist() == [t or "" for t in pool_table.column("text").to_pylist()[:4]]
    assert table.column("url").to_pylist() == pool_table.column("url").to_pylist()[:4]
    # img2dataset's parquet output format: the image in a `jpg` column, the text in `caption`
    pq.write_table(pa.table({"caption": ["a cat"], "jpg": pa.array([pool_table.column("image")[0].as_py()]),
                             "url": ["http://x.test/cat.jpg"]}), tmp_path / "i2d.parquet")
    table, _, _ = read_all(tmp_path / "i2d.parquet")
    assert table.column("text").to_pylist() == ["a cat"] and len(table.column("uid")[0].as_py()) == 32


def test_missing_columns_and_half_written_parquet_are_named(tmp_path):
    pq.write_table(pa.table({"caption_text": ["x"], "image": [b"y"]}), tmp_path / "nocaption.parquet")
    with pytest.raises(InputError, match=r"nocaption\.parquet: missing column.*'text'"):
        plan_inputs([str(tmp_path / "nocaption.parquet")])
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["x"] * 100, "image": [b"y"] * 100}), good)
    (tmp_path / "half.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"half\.parquet: not a readable Parquet file"):
        plan_inputs([str(tmp_path / "half.parquet")])
    with pytest.raises(InputError, match="no such file"):
        plan_inputs([str(tmp_path / "nowhere")])


def test_unreadable_tar_is_an_error_not_an_empty_task(tmp_path):
    import gzip

    (tmp_path / "x.tar").write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(InputError, match=r"x\.tar: not a readable tar"):
        read_all(tmp_path / "x.tar")


def test_repeated_rows_without_uids_get_distinct_uids(tmp_path, real_jpeg):
    rows = {"url": ["http://a/x.jpg"] * 3, "text": ["cat"] * 3, "image": [real_jpeg] * 3}
    pq.write_table(pa.table(rows), tmp_path / "dups.parquet")
    table, _, _ = read_all(tmp_path / "dups.parquet")
    assert len(set(table.column("uid").to_pylist())) == 3


def test_a_read_batch_slices_and_adds_failures_by_position():
    """A reader's batch is a table and its failures by position: slices keep each failure with its
    row, a later check adds only to rows read whole so far, and kept() drops the failed rows."""
    batch = ReadBatch.of_rows(pa.table({"uid": list("abcde")}), [None, "x", None, "y", None],
                              [None, "1", None, "2", None])
    assert batch.kept()["uid"].to_pylist() == ["a", "c", "e"]
    part = batch.slice(1, 3)  # b, c, d
    x, y = {"position": 0, "reason": "x", "value": "1"}, {"position": 2, "reason": "y", "value": "2"}
    assert part.table["uid"].to_pylist() == ["b", "c", "d"] and part.failures.to_pylist() == [x, y]
    checked = part.failing(pa.chunked_array([[True, True, True]]), "z", pa.chunked_array([["p", "q", "r"]]))
    assert checked.failures.to_pylist() == [x, {"position": 1, "reason": "z", "value": "q"}, y]
    assert checked.kept().num_rows == 0 and batch.slice(4, 1).failures.num_rows == 0
