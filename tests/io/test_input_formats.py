"""Inputs as other tools write them, read without losing a sample or a column (issue 18, items 1-4):
img2dataset's `files` output (made by img2dataset itself against a local server), Parquet whose
`image` column holds file paths or Hugging Face `datasets`' Image structs, and WebDataset shards
whose .json fields come back as columns (our own shards read back keep every column)."""

import functools
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.config import ConfigError
from curate.engines.local import LocalEngine
from curate.io.readers.tasks import plan_inputs
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from tests.io.reading import read_all


def run(inputs, out, stages=({"stage": "decode"},)):
    pipeline = parse_pipeline({"name": "t", "stages": list(stages)}, "t.yaml")
    return run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(p) for p in inputs], out)


@pytest.fixture(scope="module")
def img2dataset_files(tmp_path_factory, pool_table):
    """img2dataset's `files` output of 6 pool images served on 127.0.0.1 and one URL that 404s:
    00000/{key}.jpg|txt|json for each image it fetched, 00000.parquet (all 7 URLs, its metadata)
    and 00000_stats.json."""
    root = tmp_path_factory.mktemp("i2d")
    served = root / "served"
    served.mkdir()
    rows = pool_table.slice(0, 6).to_pylist()
    for i, row in enumerate(rows):
        (served / f"{i}.jpg").write_bytes(row["image"])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/{i}.jpg" for i in range(6)] + [f"{base}/missing.jpg"]
    captions = [f"drawing number {i}" for i in range(7)]
    pq.write_table(pa.table({"url": urls, "caption": captions}), root / "urls.parquet")
    script = ("from img2dataset import download; import sys; download(url_list=sys.argv[1], input_format='parquet', "
              "url_col='url', caption_col='caption', output_format='files', output_folder=sys.argv[2], "
              "processes_count=1, thread_count=2, image_size=64, resize_mode='keep_ratio', timeout=5, retries=0)")
    result = subprocess.run([sys.executable, "-c", script, str(root / "urls.parquet"), str(root / "files")],
                            capture_output=True, text=True, timeout=300)
    server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "files"


def test_img2dataset_files_output_reads_as_img2dataset_wrote_it(img2dataset_files, tmp_path):
    written = sorted(p.relative_to(img2dataset_files).as_posix() for p in img2dataset_files.rglob("*"))
    assert "00000.parquet" in written and "00000_stats.json" in written and len(written) == 3 + 6 * 3
    tasks = plan_inputs([str(img2dataset_files)])
    assert [(t.kind, t.path) for t in tasks] == [("files", str(img2dataset_files / "00000"))]
    table, reasons, _ = read_all(img2dataset_files)
    assert reasons == [None] * 6
    assert sorted(table.column("text").to_pylist()) == [f"drawing number {i}" for i in range(6)]
    # the .json fields are columns, typed as the json has them: img2dataset's own record of each sample
    for name, type_ in (("key", pa.string()), ("status", pa.string()), ("sha256", pa.string()),
                        ("original_width", pa.int64()), ("original_height", pa.int64()), ("exif", pa.string())):
        assert table.schema.field(name).type == type_, name
    assert set(table.column("status").to_pylist()) == {"success"}
    metadata = pq.read_table(img2dataset_files / "00000.parquet")
    fetched = metadata.filter(pa.compute.equal(metadata.column("status"), "success"))
    assert sorted(table.column("sha256").to_pylist()) == sorted(fetched.column("sha256").to_pylist())
    stats = run([img2dataset_files], tmp_path / "out")
    assert stats["input"] == 6 and stats["kept"] == 6  # every fetched image: none missing


def test_image_paths_are_read_relative_to_the_parquet(tmp_path, pool_table):
    folder = tmp_path / "in"
    (folder / "images").mkdir(parents=True)
    rows = pool_table.slice(0, 3).to_pylist()
    (folder / "images" / "0.jpg").write_bytes(rows[0]["image"])
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(rows[1]["image"])
    paths = ["images/0.jpg", str(elsewhere), "images/2.jpg"]  # relative, absolute, missing
    pq.write_table(pa.table({"uid": [r["uid"] for r in rows], "text": [r["text"] for r in rows], "image": paths}),
                   folder / "paths.parquet")
    table, reasons, values = read_all(folder)
    assert reasons == [None, None, "image_file_missing"]
    assert values[2] == f"{folder / 'images' / '2.jpg'}: no such file"
    assert table.column("image").to_pylist() == [rows[0]["image"], rows[1]["image"], None]
    assert table.column("image_path").to_pylist() == paths
    stats = run([folder], tmp_path / "out")
    assert stats["kept"] == 2 and stats["rejected"] == 1
    assert pq.read_table(tmp_path / "out" / "rejected.parquet").column("reason").to_pylist() == ["image_file_missing"]


def test_a_url_list_without_a_download_stage_fails_before_work(tmp_path):
    (tmp_path / "urls.csv").write_text("url,caption\nhttp://x.test/1.jpg,a cat\n")
    with pytest.raises(ConfigError, match=r"stages\[0\] \(decode\) needs image bytes.*Add a 'download' stage"):
        run([tmp_path / "urls.csv"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hugging_face_image_structs_are_accepted(tmp_path, pool_table):
    """The layout `datasets` writes for an Image feature: a struct of bytes and path (bytes null when
    the image is a file, the path then relative to the data), its features in the schema metadata."""
    rows = pool_table.slice(0, 3).to_pylist()
    (tmp_path / "2.jpg").write_bytes(rows[2]["image"])
    image = pa.array([{"bytes": rows[0]["image"], "path": "0.jpg"}, {"bytes": rows[1]["image"], "path": None},
                      {"bytes": None, "path": "2.jpg"}], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    features = {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"}}
    table = pa.table({"image": image, "text": [r["text"] for r in rows]})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    read, reasons, _ = read_all(tmp_path / "train-00000-of-00001.parquet")
    assert reasons == [None] * 3
    assert read.column("image").to_pylist() == [r["image"] for r in rows]
    assert read.column("image_path").to_pylist() == ["0.jpg", None, "2.jpg"]
    stats = run([tmp_path / "train-00000-of-00001.parquet"], tmp_path / "out")
    assert stats["kept"] == 3


def test_our_own_shards_read_back_keep_every_column(tmp_path, pool_root):
    first = tmp_path / "first"
    stages = [{"stage": "decode"}, {"stage": "language", "languages": ["en", "fr", "de", "es"]},
              {"stage": "near_dedup", "radius": 2}]
    run([pool_root / "pool"], first, stages)
    written = pq.read_table(first / "parquet").sort_by("uid")
    table, reasons, _ = read_all(first / "shards")
    table = table.sort_by("uid")
    assert reasons == [None] * written.num_rows
    carried = ["category", "keywords", "title", "lang", "lang_score", "phash", "width", "height", "image_format"]
    for name in carried:
        expected = written.column(name).to_pylist()
        assert table.column(name).to_pylist() == (pytest.approx(expected) if name == "lang_score" else expected), name
    assert table.schema.field("keywords").type == pa.list_(pa.string())
    assert table.schema.field("phash").type == pa.int64()
    # a second run over the shards carries them into its own Parquet output
    again = tmp_path / "again"
    run([first / "shards"], again)
    assert set(carried) <= set(pq.read_schema(next((again / "parquet").glob("*.parquet"))).names)


@pytest.mark.parametrize("stages", [[{"stage": "decode"}],
                                    [{"stage": "decode"}, {"stage": "exact_dedup", "key": "image_text"}]])
def test_a_json_field_first_seen_after_the_first_batch_is_kept(tmp_path, real_jpeg, stages):
    """Each batch types its own json fields; the task's Parquet part widens to hold a field null in
    the first batch and text later, and one the first batch does not have at all (with a global
    stage, the first pass's Arrow IPC work part widens so, and the last pass reads it back)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(20):
            meta = {"note": None if i < 12 else f"note {i}", "n": i}
            if i >= 15:
                meta["late"] = [i, i + 1]
            members = (("jpg", real_jpeg), ("txt", f"caption {i}".encode()), ("json", json.dumps(meta).encode()))
            for ext, data in members:
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.tar").write_bytes(buffer.getvalue())
    pipeline = parse_pipeline({"name": "t", "batch_size": 8, "stages": stages}, "t.yaml")
    stats = run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(tmp_path / "in")], tmp_path / "out")
    assert stats["kept"] == 20
    out = pq.read_table(tmp_path / "out" / "parquet")
    assert out.column("note").to_pylist() == [None] * 12 + [f"note {i}" for i in range(12, 20)]
    assert out.column("n").to_pylist() == list(range(20))
    assert out.column("late").to_pylist() == [None] * 15 + [[i, i + 1] for i in range(15, 20)]
