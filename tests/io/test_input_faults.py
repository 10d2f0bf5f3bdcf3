"""Input that is damaged or wrong: a corrupt Parquet page, tar members that are links, captions
that are not UTF-8. Each is an error naming where it is, or a sample in the ledger with its
reason; none is lost (issue 17, items 9, 10 and 12). Empty and repeated uids:
tests/engines/test_uniqueness.py."""

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest

from curate.engines.local import LocalEngine
from curate.io.readers.contract import InputError
from curate.io.readers.tasks import plan_inputs, read_task
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from tests.io.reading import read_all


def run(tmp_path, inputs, **settings):
    pipeline = parse_pipeline({"name": "t", **settings, "stages": [{"stage": "decode"}]}, "t.yaml")
    return run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(p) for p in inputs], tmp_path / "out")


def ledger(tmp_path):
    return pq.read_table(tmp_path / "out" / "rejected.parquet").to_pylist()


def garble(path, row_group: int, column: str, where: str) -> None:
    """Flip 8 bytes of a column chunk's first page in place: in its header (the page cannot be
    parsed) or in its payload (the page checksum the writer stored no longer matches)."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(pq.read_schema(path).names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    offset = start + (3 if where == "header" else chunk.total_compressed_size // 2)
    data = bytearray(path.read_bytes())
    data[offset:offset + 8] = bytes(b ^ 0x5A for b in data[offset:offset + 8])
    path.write_bytes(bytes(data))


@pytest.fixture()
def corrupt_parquet(tmp_path, pool_table):
    """40 pool rows in 4 row groups of 10, with page checksums; row group 1's uid column has a
    garbled page header, row group 2's image column a garbled page payload."""
    rows = pool_table.select(["uid", "url", "text", "image"]).slice(0, 40)
    path = tmp_path / "in" / "bad.parquet"
    path.parent.mkdir()
    pq.write_table(rows, path, row_group_size=10, write_page_checksum=True)
    garble(path, 1, "uid", "header")
    garble(path, 2, "image", "payload")
    return path, rows


def test_a_corrupt_page_fails_its_task_naming_the_file_and_row_group(tmp_path, corrupt_parquet):
    path, _ = corrupt_parquet
    tasks = plan_inputs([str(path)])
    with pytest.raises(InputError, match=rf"{path}: row group 2 of 4: unreadable \(OSError: .*CRC.*\); set "
                                         r"on_unreadable: ledger"):
        list(read_task(tasks[2], 8))
    # a run fails in its uid check, on the first unreadable row group, before any stage runs
    with pytest.raises(InputError, match=rf"{path}: row group 1 of 4: unreadable uid column .*on_unreadable: ledger"):
        run(tmp_path, [path])
    assert not (tmp_path / "out" / "parquet").exists()


def test_on_unreadable_ledger_sends_the_row_groups_rows_to_the_ledger(tmp_path, corrupt_parquet):
    path, rows = corrupt_parquet
    stats = run(tmp_path, [path], on_unreadable="ledger")
    assert stats["input"] == 40 and stats["kept"] + stats["rejected"] == 40
    read = [r for r in ledger(tmp_path) if r["stage"] == "read"]
    assert {r["reason"] for r in read} == {"unreadable_row_group"} and len(read) == 20
    uids = rows.column("uid").to_pylist()
    # row group 2's uids still read (its image page is the bad one); row group 1's do not: its rows are named by place
    assert sorted(r["uid"] for r in read) == sorted([f"{path}#1:{i}" for i in range(10)] + uids[20:30])
    assert all(r["value"].startswith(f"{path}: row group ") for r in read)
    kept = pq.read_table(tmp_path / "out" / "parquet").column("uid").to_pylist()
    assert sorted(kept) == sorted(uids[:10] + uids[30:])


def write_tar(path, members):
    """A tar of (name, bytes) regular files and (name, ("symlink" | "hardlink", target)) links."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.SYMTYPE if data[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_samples_of_links_are_counted_and_ledgered(tmp_path, real_jpeg):
    shards = tmp_path / "in"
    shards.mkdir()
    write_tar(shards / "00000.tar", [
        ("a.jpg", real_jpeg), ("a.txt", b"a cat"),
        ("b.jpg", ("symlink", "../pool/b.jpg")), ("b.txt", ("symlink", "../pool/b.txt")),  # only links
        ("c.jpg", ("hardlink", "a.jpg")), ("c.txt", b"a cat again"),
        ("d.jpg", real_jpeg), ("d.txt", b"a dog"),
    ])
    table, reasons, values = read_all(shards)
    assert table.num_rows == 4
    assert reasons == [None, "unsupported_member", "unsupported_member", None]
    assert values[1] == "b.jpg: a symbolic link to ../pool/b.jpg; only regular files are read"
    assert values[2] == "c.jpg: a hard link to a.jpg; only regular files are read"
    stats = run(tmp_path, [shards])
    assert stats["input"] == 4 and stats["kept"] == 2 and stats["rejected"] == 2
    assert sorted(r["reason"] for r in ledger(tmp_path)) == ["unsupported_member"] * 2


def test_captions_that_are_not_utf8_are_rejected_not_replaced(tmp_path, real_jpeg):
    shards = tmp_path / "tars"
    shards.mkdir()
    write_tar(shards / "00000.tar", [("a.jpg", real_jpeg), ("a.txt", b"caf\xe9 au lait"),
                                     ("b.jpg", real_jpeg), ("b.txt", "café".encode())])
    table, reasons, values = read_all(shards)
    assert reasons == ["invalid_utf8", None]
    assert values[0] == "a.txt: invalid UTF-8 at byte 3 (e9206175...)"
    assert table.column("text").to_pylist()[1] == "café"
    folder = tmp_path / "files" / "00000"  # an img2dataset files folder reads the same way
    folder.mkdir(parents=True)
    (folder / "000000000.jpg").write_bytes(real_jpeg)
    (folder / "000000000.txt").write_bytes(b"\xff\xfeh\x00i\x00")  # UTF-16
    _, reasons, values = read_all(tmp_path / "files")
    assert reasons == ["invalid_utf8"] and values[0] == "000000000.txt: invalid UTF-8 at byte 0 (fffe6800...)"


def test_a_json_that_is_not_an_object_is_bad_metadata(tmp_path, real_jpeg):
    write_tar(tmp_path / "x.tar", [("a.jpg", real_jpeg), ("a.json", json.dumps([1, 2]).encode())])
    _, reasons, values = read_all(tmp_path / "x.tar")
    assert reasons == ["bad_metadata"] and values == ["a.json is not a JSON object"]
