"""Output shards: WebDataset tars readable by the webdataset library, DataComp uid files."""

import io
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from curate.engines.local import LocalEngine
from curate.io.tar_shard import TarShard, ustar_headers
from curate.io.writers import PartWriter, atomic, file_key, image_extension
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline
from curate.schema import UID_DTYPE


@pytest.fixture(scope="module")
def run_output(pool_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    pipeline = load_pipeline(__import__("pathlib").Path(__file__).parents[2] / "pipelines" / "quickstart.yaml")
    stats = run_pipeline(pipeline, LocalEngine(progress=False), [str(pool_root / "pool")], out)
    return out, stats


def test_webdataset_shards_open_and_images_decode(run_output):
    out, stats = run_output
    kept = {r["uid"]: r for p in sorted((out / "parquet").glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    urls = [str(p) for p in sorted((out / "shards").glob("*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg;png;webp", "txt", "json")
    seen = 0
    for key, image, text, meta in dataset:
        assert isinstance(image, Image.Image) and image.size == (kept[key]["width"], kept[key]["height"])
        assert text == kept[key]["text"] and meta["uid"] == key and meta["lang"] == "en"
        seen += 1
    assert seen == stats["kept"] == len(kept) > 0


def test_uids_file_is_datacomp_format(run_output):
    out, stats = run_output
    uids = np.load(out / "uids.npy")
    assert uids.dtype == UID_DTYPE and len(uids) == stats["kept"]
    assert (np.sort(uids) == uids).all()
    kept = sorted(u for p in (out / "parquet").glob("*.parquet") for u in pq.read_table(p)["uid"].to_pylist())
    assert sorted(f"{a:016x}{b:016x}" for a, b in uids.tolist()) == kept


def test_report_and_stats(run_output):
    out, stats = run_output
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["input"] == stats["input"] == on_disk["kept"] + on_disk["rejected"]
    for stage in on_disk["stages"]:
        assert stage["in"] - stage["out"] == sum(stage["reasons"].values())
    page = (out / "report.html").read_text()
    # a pool-and-kept figure each for caption length, shorter side, aspect ratio and language (no
    # CLIP score in this pipeline), and the funnel and reasons as bar tables
    assert re.findall(r"data-plot='(\w+)'", page) == ["caption", "side", "aspect", "lang"] and "Language" in page
    assert page.count("data:image/png;base64,") == 4
    assert "<h2>Funnel</h2>" in page and "<h2>Rejection reasons</h2>" in page
    for stage in on_disk["stages"]:  # a global stage's fit rows are folded into its own row
        if not stage["key"].endswith(":fit"):
            assert f"after {stage['key']}</td><td class='n'>{stage['out']:,}</td>" in page


def test_failed_write_leaves_nothing(tmp_path, real_jpeg):
    import pyarrow as pa

    table = pa.table({"uid": ["a" * 32], "text": ["x"], "image": pa.array([real_jpeg], pa.binary())})
    with pytest.raises(RuntimeError):
        with PartWriter(tmp_path / "p.parquet", tmp_path / "p.tar") as writer:
            writer.write(table)
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_image_extension_sniffs_formats(real_jpeg):
    png, webp = io.BytesIO(), io.BytesIO()
    Image.open(io.BytesIO(real_jpeg)).save(png, format="PNG")
    Image.open(io.BytesIO(real_jpeg)).save(webp, format="WEBP")
    assert [image_extension(b) for b in (real_jpeg, png.getvalue(), webp.getvalue())] == ["jpg", "png", "webp"]


def test_rows_without_image_and_unsafe_uids_stay_readable(tmp_path, real_jpeg):
    import pyarrow as pa

    table = pa.table({"uid": ["img.001/a", "b" * 32], "text": ["x", "y"],
                      "image": pa.array([None, real_jpeg], pa.binary())})
    with PartWriter(tmp_path / "p.parquet", tmp_path / "p.tar") as writer:
        writer.write(table)
    samples = list(wds.WebDataset(str(tmp_path / "p.tar"), shardshuffle=False))
    assert [json.loads(s["json"])["uid"] for s in samples] == ["img.001/a", "b" * 32]
    assert "jpg" not in samples[0] and "jpg" in samples[1]


def test_atomic_writers_of_one_file_at_once_do_not_collide(tmp_path):
    """Two workers committing the same file at the same moment (both embedding the eval set
    into one store) each write their own temporary file; the last rename wins."""
    target = tmp_path / "shard.npy"
    with atomic(target) as first:
        first.write_bytes(b"first")
        with atomic(target) as second:
            second.write_bytes(b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["shard.npy"]


def _tarfile_reference(path, members):
    """The tar Python's tarfile writes for `members` (name, bytes), as the writer did before it built
    headers in bulk."""
    import tarfile

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_tar_shard_is_byte_for_byte_what_tarfile_writes(tmp_path):
    import random

    rng = random.Random(7)
    members = [(f"{'k' * rng.randint(1, 95)}.{rng.choice(['jpg', 'txt', 'json', 'webp'])}",
                rng.randbytes(rng.choice([0, 1, 511, 512, 513, 1024, 10_241, rng.randint(0, 3000)])))
               for _ in range(120)]
    shard = TarShard(tmp_path / "bulk.tar")
    for start, stop in ((0, 0), (0, 1), (1, 50), (50, 120)):  # batches of 0, 1 and many members
        shard.add([n for n, _ in members[start:stop]], [d for _, d in members[start:stop]])
    shard.close()
    assert (tmp_path / "bulk.tar").read_bytes() == _tarfile_reference(tmp_path / "reference.tar", members)
    empty = TarShard(tmp_path / "empty.tar")
    empty.close()
    assert (tmp_path / "empty.tar").read_bytes() == _tarfile_reference(tmp_path / "empty-reference.tar", [])


def test_member_names_must_fit_ustar():
    ustar_headers(["a" * 100], np.array([0]))
    with pytest.raises(ValueError, match="longer than USTAR's 100 bytes"):
        ustar_headers(["a.txt", "b" * 101], np.array([0, 0]))
    with pytest.raises(ValueError, match="must be ASCII"):
        ustar_headers(["caf\u00e9.txt"], np.array([0]))


def test_part_tar_reads_back_member_for_member(tmp_path, real_jpeg):
    """Long, unsafe and unicode uids, empty and null captions, rows without images, two batches: tarfile,
    webdataset and curate's reader all see exactly the members a per-row tarfile writer made."""
    import hashlib
    import tarfile

    import pyarrow as pa

    from curate.io.readers.tasks import plan_inputs, read_task

    png = io.BytesIO()
    Image.open(io.BytesIO(real_jpeg)).save(png, format="PNG")
    long_uid = "u" * 120  # a plain name, but {key}.json would not fit a 100-byte member name
    rows = [
        {"uid": "a" * 32, "text": "a red fox", "image": real_jpeg, "score": 0.25},
        {"uid": long_uid, "text": "", "image": png.getvalue(), "score": None},
        {"uid": "img.001/a", "text": None, "image": None, "score": 1.5},
        {"uid": "b" * 95, "text": "\u6771\u4eac caf\u00e9 \u2014 \U0001f98a", "image": real_jpeg, "score": -1.0},
        {"uid": "c" * 32, "text": "line one\nline two", "image": b"", "score": 0.0},
    ]
    schema = pa.schema([("uid", pa.string()), ("text", pa.string()), ("image", pa.binary()), ("score", pa.float32())])
    table = pa.Table.from_pylist(rows, schema)
    with PartWriter(tmp_path / "p.parquet", tmp_path / "p.tar") as writer:
        writer.write(table.slice(0, 2))
        writer.write(table.slice(2))
    assert file_key(long_uid) == hashlib.md5(long_uid.encode()).hexdigest() and file_key("b" * 95) == "b" * 95

    expected = []  # the members, as the writer made them one tarfile member at a time
    for row in table.to_pylist():
        key, meta = file_key(row["uid"]), {k: v for k, v in row.items() if k != "image"}
        if row["image"] is not None:
            expected.append((f"{key}.{image_extension(row['image'])}", row["image"]))
        expected += [(f"{key}.txt", (row["text"] or "").encode()),
                     (f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())]
    assert (tmp_path / "p.tar").read_bytes() == _tarfile_reference(tmp_path / "reference.tar", expected)

    with tarfile.open(tmp_path / "p.tar") as tar:
        assert [(m.name, m.size, tar.extractfile(m).read()) for m in tar] == [(n, len(d), d) for n, d in expected]
    samples = list(wds.WebDataset(str(tmp_path / "p.tar"), shardshuffle=False))
    by_key: dict[str, dict] = {}
    for name, data in expected:
        key, _, ext = name.partition(".")
        by_key.setdefault(key, {})[ext] = data
    assert [s["__key__"] for s in samples] == list(by_key)
    assert [{k: v for k, v in s.items() if not k.startswith("__")} for s in samples] == list(by_key.values())
    assert [json.loads(s["json"])["uid"] for s in samples] == [r["uid"] for r in rows]
    read = pa.concat_tables(v.table for task in plan_inputs(str(tmp_path / "p.tar")) for v in read_task(task, 2))
    assert read.column("uid").to_pylist() == [r["uid"] for r in rows]
    assert read.column("text").to_pylist() == [r["text"] or "" for r in rows]
    # (an empty image is written as {key}.img, an extension no reader takes for an image, as before)
    assert read.column("image").to_pylist() == [r["image"] or None for r in rows]


def test_a_metadata_run_without_webdataset_writes_no_tars(tmp_path):
    """outputs: [parquet, uids] on a metadata input (uid, url, text; no image column): kept Parquet
    parts and uids.npy, and not one tar."""
    import pyarrow as pa

    from curate.pipeline import parse_pipeline

    texts = ["a red fox", "x", "two words", None, "a drawing of a cat"] * 10
    table = pa.table({"uid": [f"{i:032x}" for i in range(len(texts))],
                      "url": [f"http://e.test/{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "meta.parquet", row_group_size=20)
    raw = {"name": "meta", "outputs": ["parquet", "uids"], "stages": [{"stage": "caption", "min_words": 2}]}
    stats = run_pipeline(parse_pipeline(raw, "meta.yaml"), LocalEngine(progress=False), [str(tmp_path / "in")],
                         tmp_path / "out")
    out = tmp_path / "out"
    kept = [u for p in sorted((out / "parquet").glob("*.parquet")) for u in pq.read_table(p)["uid"].to_pylist()]
    assert len(kept) == stats["kept"] == 30 and stats["kept"] + stats["rejected"] == len(texts)
    assert len(np.load(out / "uids.npy")) == 30
    assert not list(out.rglob("*.tar")) and not list(out.rglob("*.tar.tmp"))
    other = run_pipeline(parse_pipeline({**raw, "outputs": ["parquet"]}, "meta.yaml"), LocalEngine(progress=False),
                         [str(tmp_path / "in")], tmp_path / "no-uids")
    assert not (tmp_path / "no-uids" / "uids.npy").exists()
    assert other["kept_fraction"] == stats["kept_fraction"] == 0.6  # counted from the uid parts all the same
