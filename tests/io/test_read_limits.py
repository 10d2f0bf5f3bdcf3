"""Size caps at read time: a tar member, image file or Parquet image cell over max_member_bytes is
not loaded and a caption over max_caption_bytes is rejected, each sample in the ledger with its
reason; a 20 KB tar holding a sparse 1.5 GB member runs in bounded memory."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.readers.contract import ReadLimits
from curate.pipeline import load_pipeline
from tests.io.reading import read_all

SPARSE_SIZE = 1536 << 20  # 1.5 GiB, as the member's header says; the tar stores one 512-byte block of it
# run a command, then print the largest resident set (KiB) of it and every process it waited for
PEAK_RSS = "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); " \
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"


def gnu_sparse_header(name: str, real_size: int, stored: int) -> bytes:
    """An old-GNU sparse member header (type 'S'): `stored` bytes of data at the end of a file
    of `real_size` bytes, the rest a hole. Python's tarfile reads these, it cannot write them."""
    header = bytearray(tarfile.TarInfo(name).tobuf(tarfile.GNU_FORMAT))
    header[124:136] = b"%011o\0" % stored
    header[156:157] = b"S"
    header[386:410] = b"%011o\0%011o\0" % (real_size - stored, stored)  # the one (offset, numbytes) entry
    header[483:495] = b"%011o\0" % real_size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sample_files(row: dict, key: str) -> dict[str, bytes]:
    return {f"{key}.jpg": row["image"], f"{key}.txt": (row["text"] or "").encode(),
            f"{key}.json": json.dumps({"uid": row["uid"], "url": row["url"]}).encode()}


def write_sparse_tar(path: Path, rows: list[dict], sparse_at: int) -> str:
    """A tar of `rows` whose sample `sparse_at` has a 1.5 GiB sparse image; returns that sample's uid."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i, row in enumerate(rows):
            for name, data in sample_files(row, f"{i:09d}").items():
                if i == sparse_at and name.endswith(".jpg"):
                    tar.fileobj.write(gnu_sparse_header(name, SPARSE_SIZE, 512) + b"\xff" * 512)
                    tar.offset += 1024
                else:
                    add(tar, name, data)
    path.write_bytes(buffer.getvalue())
    return rows[sparse_at]["uid"]


def test_the_sparse_member_claims_its_full_size(tmp_path, pool_table):
    path = tmp_path / "sparse.tar"
    write_sparse_tar(path, pool_table.slice(0, 3).to_pylist(), 1)
    with tarfile.open(path) as tar:
        member = tar.getmember("000000001.jpg")
        assert member.size == SPARSE_SIZE and member.sparse[0] == (SPARSE_SIZE - 512, 512)
    assert path.stat().st_size < 100_000


def test_a_run_over_a_sparse_member_stays_small_and_ledgers_it(tmp_path, pool_table):
    shards = tmp_path / "in"
    shards.mkdir()
    rows = pool_table.slice(0, 12).to_pylist()
    uid = write_sparse_tar(shards / "00000.tar", rows, 5)
    assert (shards / "00000.tar").stat().st_size < 1 << 20  # the images; the 1.5 GiB member stores 512 bytes
    out = tmp_path / "out"
    recipe = Path(__file__).parents[2] / "pipelines" / "no_filter.yaml"
    command = [sys.executable, "-m", "curate.cli", "run", str(recipe), "--input", str(shards), "--output", str(out),
               "--workers", "1", "--quiet"]
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout.split()[-1]) / 1024
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB"
    ledger = pq.read_table(out / "rejected.parquet").to_pylist()
    read = [r for r in ledger if r["stage"] == "read"]
    assert [(r["uid"], r["reason"]) for r in read] == [(uid, "member_too_large")]
    assert read[0]["value"] == f"000000005.jpg: {SPARSE_SIZE} bytes > max_member_bytes {64 << 20}"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input"] == 12 and stats["kept"] + stats["rejected"] == 12 and stats["kept"] >= 10


def test_tar_members_over_the_caps_are_not_read(tmp_path, pool_table):
    rows = pool_table.slice(0, 4).to_pylist()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, row in enumerate(rows):
            files = sample_files(row, f"{i:09d}")
            if i == 1:
                files[f"{i:09d}.txt"] = b"word " * 300  # 1,500 bytes
            if i == 2:  # no .txt: the caption comes from the JSON
                del files[f"{i:09d}.txt"]
                files[f"{i:09d}.json"] = json.dumps({"uid": row["uid"], "caption": "long " * 300}).encode()
            for name, data in files.items():
                add(tar, name, data)
    (tmp_path / "t.tar").write_bytes(buffer.getvalue())
    biggest = max(len(r["image"]) for r in rows)
    table, reasons, values = read_all(tmp_path / "t.tar", ReadLimits(max_member_bytes=biggest, max_caption_bytes=1000))
    assert reasons == [None, "caption_too_long", "caption_too_long", None]
    assert values[1] == "000000001.txt: 1500 bytes > max_caption_bytes 1000"
    assert values[2] == "1500 bytes > max_caption_bytes 1000"
    assert table.column("uid").to_pylist() == [r["uid"] for r in rows]
    _, reasons, values = read_all(tmp_path / "t.tar", ReadLimits(max_member_bytes=biggest - 1))
    big = [len(r["image"]) == biggest for r in rows]
    assert reasons == ["member_too_large" if b else None for b in big]
    assert [v for v in values if v] == [f"{i:09d}.jpg: {biggest} bytes > max_member_bytes {biggest - 1}"
                                        for i, b in enumerate(big) if b]


def test_parquet_cells_over_the_caps_are_rejected_and_the_caps_are_pipeline_settings(tmp_path, pool_table):
    rows = pool_table.select(["uid", "url", "text", "image"]).slice(0, 6)
    text = rows.column("text").to_pylist()
    text[4] = "é" * 600  # 1,200 UTF-8 bytes
    rows = rows.set_column(2, "text", pa.array(text, pa.string()))
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(rows, folder / "a.parquet")
    sizes = [len(b) for b in rows.column("image").to_pylist()]
    cap = sorted(sizes)[-2]  # the largest image is over it
    recipe = tmp_path / "capped.yaml"
    recipe.write_text(f"name: capped\nmax_member_bytes: {cap}\nmax_caption_bytes: 1000\nstages:\n  - stage: decode\n")
    limits = load_pipeline(recipe).settings.read_limits()
    assert limits == ReadLimits(cap, 1000)
    _, reasons, values = read_all(folder, limits)
    expected = ["image_too_large" if s > cap else None for s in sizes]
    expected[4] = expected[4] or "caption_too_long"
    assert reasons == expected and values[4] == "1200 bytes > max_caption_bytes 1000"
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(recipe), "--input", str(folder),
                             "--output", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ledger = {r["uid"]: r["reason"] for r in pq.read_table(out / "rejected.parquet").to_pylist()
              if r["stage"] == "read"}
    uids = rows.column("uid").to_pylist()
    assert ledger == {u: r for u, r in zip(uids, expected) if r}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] + stats["rejected"] == 6
