"""Output shards: WebDataset tars readable by the webdataset library, DataComp uid files."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from curate.engines.local import LocalEngine
from curate.io.writers import PartWriter, atomic, image_extension
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
    # three figures (caption length, image size, language) and the funnel and reasons as bar tables
    assert page.count("data:image/png;base64,") == 3 and "Language" in page
    assert "<h2>Funnel</h2>" in page and "<h2>Rejection reasons</h2>" in page
    for stage in on_disk["stages"]:
        assert f"after {stage['key']}</td><td class='n'>{stage['out']}</td>" in page


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
