"""Object storage, against a real S3 API (moto's server on 127.0.0.1): a run from s3:// equals the
same run from local files; globs and brace ranges name the right objects; a missing object, a file
that is not Parquet and missing credentials are errors naming the URL; outputs written atomically
(whole or not at all), markers listed, outputs removed; a run into s3:// (staged locally, then
published) equals the local run, resumes when killed, redoes a cut-short publish, reuses a finished
one and refuses, or overwrites only curate's objects of, a prefix holding something else."""

import json
import shutil
import subprocess
import sys

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from curate.config import ConfigError
from curate.engines.local import LocalEngine
from curate.io.paths import (
    atomic_output,
    exists,
    expand,
    file_stamp,
    files_under,
    is_url,
    read_bytes,
    remove,
    write_bytes,
)
from curate.io.readers.contract import InputError
from curate.io.readers.tasks import plan_inputs, read_task
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline
from tests.engines.helpers import kill_after_first_task
from tests.io.test_readers import write_tar

PIPELINE = """
name: s3
batch_size: 16
stages:
  - stage: decode
  - stage: caption
    min_words: 2
  - stage: image_size
    min_side: 32
  - stage: file_size
    min_bytes: 2000
"""


def tar_samples(pool_table, start, n):
    """WebDataset samples of pool rows, under uids of their own (the same images as the Parquet rows)."""
    rows = pool_table.slice(start, n).to_pylist()
    return [(f"{start + i:09d}", {"jpg": r["image"], "txt": f"tar copy of {r['text']}".encode(),
                                  "json": json.dumps({"url": r["url"], "uid": f"tar-{r['uid']}"}).encode()})
            for i, r in enumerate(rows)]


@pytest.fixture()
def local_inputs(tmp_path, faulty_input, pool_table):
    """A local input: the pool and the fault rows as Parquet, and three WebDataset shards."""
    folder = tmp_path / "in"
    (folder / "shards").mkdir(parents=True)
    shutil.copy(faulty_input / "a.parquet", folder / "pool.parquet")
    shutil.copy(faulty_input / "b.parquet", folder / "faults.parquet")
    for shard in range(3):
        write_tar(folder / "shards" / f"{shard:05d}.tar", tar_samples(pool_table, shard * 10, 10))
    return folder


def outputs(out) -> dict:
    """A run's kept rows, ledger, shards (bytes) and stats, less timings."""
    stats = json.loads((out / "stats.json").read_text())
    for key in ("elapsed_s", "samples_per_s"):
        stats.pop(key)
    return {"kept": [row for p in sorted((out / "parquet").glob("*.parquet")) for row in pq.read_table(p).to_pylist()],
            "ledger": pq.read_table(out / "rejected.parquet").to_pylist(), "stats": stats,
            "shards": {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}}


def upload(local, url) -> None:
    s3fs.S3FileSystem().put(str(local), url, recursive=True)


def test_a_run_from_s3_equals_the_run_from_local_files(local_inputs, bucket, tmp_path):
    pipeline_file = tmp_path / "s3.yaml"
    pipeline_file.write_text(PIPELINE)
    pipeline = load_pipeline(pipeline_file)
    upload(local_inputs, f"{bucket}/in")
    names = ["pool.parquet", "faults.parquet", "shards/{00000..00002}.tar"]
    local = run_pipeline(pipeline, LocalEngine(workers=2, progress=False),
                         [str(local_inputs / n) for n in names], tmp_path / "from-local")
    remote = run_pipeline(pipeline, LocalEngine(workers=2, progress=False),
                          [f"{bucket}/in/{n}" for n in names], tmp_path / "from-s3")
    got, expected = outputs(tmp_path / "from-s3"), outputs(tmp_path / "from-local")
    assert got == expected
    assert remote["input"] == local["input"] == pool_rows(local_inputs) + 30
    reasons = {row["reason"] for row in got["ledger"]}
    assert {"corrupt_image", "truncated_image", "missing_image"} <= reasons and len(got["kept"]) > 100
    # the same run again is found finished; a rewritten object makes it another run
    assert run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [f"{bucket}/in/{n}" for n in names],
                        tmp_path / "from-s3").get("resumed_complete")
    pq.write_table(pq.read_table(local_inputs / "faults.parquet").slice(1), local_inputs / "faults.parquet")
    upload(local_inputs / "faults.parquet", f"{bucket}/in/faults.parquet")
    with pytest.raises(FileExistsError, match="different pipeline or input"):
        run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [f"{bucket}/in/{n}" for n in names],
                     tmp_path / "from-s3")


def pool_rows(folder) -> int:
    return sum(pq.read_metadata(folder / n).num_rows for n in ("pool.parquet", "faults.parquet"))


def test_globs_and_brace_ranges_name_the_right_objects(local_inputs, bucket):
    upload(local_inputs, f"{bucket}/in")
    shards = [f"{bucket}/in/shards/{i:05d}.tar" for i in range(3)]
    assert expand(f"{bucket}/in/shards/{{00000..00002}}.tar") == shards
    assert expand(f"{bucket}/in/shards/{{00002,00000}}.tar") == [shards[2], shards[0]]
    assert expand(f"{bucket}/in/shards/*.tar") == shards
    assert expand(f"{bucket}/in/shards/0000[02].tar") == [shards[0], shards[2]]
    assert expand(f"{bucket}/in/*.parquet") == [f"{bucket}/in/faults.parquet", f"{bucket}/in/pool.parquet"]
    tasks = plan_inputs([f"{bucket}/in/shards/{{00001..00002}}.tar", f"{bucket}/in/p*.parquet"])
    row_groups = pq.read_metadata(local_inputs / "pool.parquet").num_row_groups
    assert [(t.kind, t.path) for t in tasks] == [("tar", shards[1]), ("tar", shards[2])] + \
        [("parquet", f"{bucket}/in/pool.parquet")] * row_groups
    # a prefix is a folder: its tars (img2dataset's webdataset layout) or else its Parquet files
    assert [t.path for t in plan_inputs(f"{bucket}/in/")] == shards
    assert [t.path for t in plan_inputs(f"{bucket}/in/shards")] == shards
    # local paths take the same patterns
    assert expand(str(local_inputs / "shards" / "{00000..00001}.tar")) == [str(local_inputs / "shards" / f"{i:05d}.tar")
                                                                          for i in range(2)]
    assert expand(str(local_inputs / "*.parquet")) == [str(local_inputs / "faults.parquet"),
                                                       str(local_inputs / "pool.parquet")]


def test_reading_from_s3_gives_the_local_samples(local_inputs, bucket):
    upload(local_inputs, f"{bucket}/in")
    for name in ("pool.parquet", "shards/00001.tar"):
        local = [v.table for t in plan_inputs(str(local_inputs / name)) for v in read_task(t, 7)]
        remote = [v.table for t in plan_inputs(f"{bucket}/in/{name}") for v in read_task(t, 7)]
        assert pa.concat_tables(remote).equals(pa.concat_tables(local)) and pa.concat_tables(local).num_rows >= 10


def test_an_img2dataset_files_folder_and_a_url_list_on_s3(tmp_path, bucket, pool_table):
    files = tmp_path / "files" / "00000"
    files.mkdir(parents=True)
    rows = pool_table.slice(0, 3).to_pylist()
    for i, row in enumerate(rows):
        (files / f"{i:09d}.jpg").write_bytes(row["image"])
        (files / f"{i:09d}.txt").write_text(row["text"] or "")
        (files / f"{i:09d}.json").write_text(json.dumps({"url": row["url"], "uid": row["uid"]}))
    (tmp_path / "urls.csv").write_text("url,caption\nhttp://x.test/a.jpg,0123\nhttp://x.test/b.jpg,a dog\n")
    upload(tmp_path / "files", f"{bucket}/files")
    upload(tmp_path / "urls.csv", f"{bucket}/urls.csv")
    (task,) = plan_inputs(f"{bucket}/files")
    assert (task.kind, task.path) == ("files", f"{bucket}/files/00000")
    table = pa.concat_tables(v.table for v in read_task(task, 8))
    assert table.column("uid").to_pylist() == [r["uid"] for r in rows]
    assert table.column("image").to_pylist() == [r["image"] for r in rows]
    (task,) = plan_inputs(f"{bucket}/urls.csv")
    table = next(read_task(task, 8)).table
    assert table.column("text").to_pylist() == ["0123", "a dog"]  # read as text, as a local list is


def test_missing_or_unreadable_objects_are_named(local_inputs, bucket):
    upload(local_inputs / "shards", f"{bucket}/shards")
    with pytest.raises(InputError, match=rf"{bucket}/shards/00003\.tar: no such file or object"):
        plan_inputs(f"{bucket}/shards/{{00000..00003}}.tar")
    with pytest.raises(InputError, match=rf"{bucket}/pool/\*\.parquet: no file or object matches"):
        plan_inputs(f"{bucket}/pool/*.parquet")
    with pytest.raises(InputError, match=r"s3://no-such-bucket/a\.parquet: no such file or object"):
        plan_inputs("s3://no-such-bucket/a.parquet")
    s3fs.S3FileSystem().pipe(f"{bucket}/fake.parquet", b"<html>not parquet</html>" * 10)
    with pytest.raises(InputError, match=rf"{bucket}/fake\.parquet: not a readable Parquet file"):
        plan_inputs(f"{bucket}/fake.parquet")
    with pytest.raises(InputError, match=r"s3://b/\{0\.\.1\.tar: Unbalanced braces"):
        plan_inputs("s3://b/{0..1.tar")
    with pytest.raises(InputError, match=r"nope://b/x\.tar: Protocol not known"):
        plan_inputs("nope://b/x.tar")


def test_missing_credentials_are_named(bucket, tmp_path, monkeypatch):
    upload_url = f"{bucket}/x.parquet"
    s3fs.S3FileSystem().pipe(upload_url, b"x")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client holds the credentials it started with
    try:
        with pytest.raises(InputError, match=rf"{upload_url}: no credentials .*AWS_ACCESS_KEY_ID"):
            plan_inputs(upload_url)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_file_stamp_follows_the_object(bucket, tmp_path):
    fs = s3fs.S3FileSystem()
    fs.pipe(f"{bucket}/d/a.bin", b"first")
    fs.pipe(f"{bucket}/d/sub/b.bin", b"other")
    (stamp,) = file_stamp(f"{bucket}/d/a.bin")
    assert stamp[:2] == [f"{bucket}/d/a.bin", 5] and stamp[2]
    assert [s[:2] for s in file_stamp(f"{bucket}/d")] == [[f"{bucket}/d/a.bin", 5], [f"{bucket}/d/sub/b.bin", 5]]
    fs.pipe(f"{bucket}/d/a.bin", b"other")  # same size, new content: a new ETag
    assert file_stamp(f"{bucket}/d/a.bin") != [stamp]
    with pytest.raises(InputError, match=rf"{bucket}/d/gone\.bin: no such file or object"):
        file_stamp(f"{bucket}/d/gone.bin")
    # a local file keeps the stamp fingerprints always had: path, size, mtime in ns
    local = tmp_path / "f.txt"
    local.write_text("abc")
    assert file_stamp(local) == [[str(local), 3, local.stat().st_mtime_ns]]


@pytest.fixture()
def small_parts(s3_endpoint):
    """s3fs uploading in 5 MiB parts (S3's smallest), so a test's writes span a multipart upload."""
    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.config.conf["s3"] = {"default_block_size": 5 * 2**20}
    yield
    del fsspec.config.conf["s3"]
    s3fs.S3FileSystem.clear_instance_cache()


def pending_uploads(fs, bucket) -> list:
    return fs.call_s3("list_multipart_uploads", Bucket=bucket.removeprefix("s3://")).get("Uploads", [])


def test_atomic_output_appears_whole_or_not_at_all(bucket, small_parts, tmp_path):
    fs = s3fs.S3FileSystem()
    chunk = bytes(range(256)) * (4 * 2**12)  # 4 MiB
    for target in (f"{bucket}/out/part.tar", tmp_path / "out" / "part.tar"):
        with atomic_output(target) as handle:
            handle.write(chunk)
            handle.write(chunk)  # past one part: on S3, a part is uploaded now
            assert not exists(target)
            assert not is_url(target) or len(pending_uploads(fs, bucket)) == 1
            handle.write(chunk)
        assert read_bytes(target) == chunk * 3
        with pytest.raises(RuntimeError, match="worker died"):
            with atomic_output(target) as handle:
                handle.write(b"new" * 2**21)
                raise RuntimeError("worker died")
        assert read_bytes(target) == chunk * 3  # the old content, untouched
    assert pending_uploads(fs, bucket) == []  # the aborted upload left no parts behind
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part.tar"]  # nor a temporary file


def test_markers_listed_and_outputs_removed(bucket, tmp_path):
    for root in (f"{bucket}/run", str(tmp_path / "run")):
        for task in range(3):
            write_bytes(f"{root}/_work/done/pass0-part-{task:05d}.json", json.dumps({"rows": task}).encode())
        write_bytes(f"{root}/parquet/part-00000.parquet", b"x")
        write_bytes(f"{root}-other/keep.json", b"{}")
        done = sorted(files_under(f"{root}/_work/done"))
        assert [d.rpartition("/")[2] for d in done] == [f"pass0-part-{t:05d}.json" for t in range(3)]
        assert json.loads(read_bytes(done[2])) == {"rows": 2}
        assert files_under(f"{root}/_work/nothing") == []
        remove(f"{root}/_work")
        remove(f"{root}/parquet/part-00000.parquet")
        remove(f"{root}/never-written")
        assert not exists(f"{root}/_work") and not exists(f"{root}/parquet/part-00000.parquet")
        assert exists(f"{root}-other/keep.json")  # a prefix is a folder: run-other is not under run


# Outputs at a URL: the run works in a local staging folder and publishes there when it finishes.

PUBLISHED_PIPELINE = PIPELINE + """  - stage: exact_dedup
"""


@pytest.fixture()
def dedup_pipeline(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text(PUBLISHED_PIPELINE)
    return load_pipeline(path)


def published(url, folder) -> dict:
    """The outputs() of a run published at `url` (downloaded into `folder`), with uids.npy's bytes."""
    s3fs.S3FileSystem().get(url, str(folder), recursive=True)
    return {**outputs(folder), "uids": (folder / "uids.npy").read_bytes()}


def local_output(folder) -> dict:
    return {**outputs(folder), "uids": (folder / "uids.npy").read_bytes()}


def object_names(url) -> set[str]:
    return {p.removeprefix(url + "/") for p in files_under(url)}


def published_names(out) -> set[str]:
    """The names a finished local run has that a publish uploads: everything but _work/ except run.json."""
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    return {n for n in names if not n.startswith("_work/")} | {"_work/run.json"}


def test_a_run_into_s3_equals_the_run_into_a_local_folder(dedup_pipeline, faulty_input, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = f"{bucket}/out"
    local = run_pipeline(dedup_pipeline, LocalEngine(workers=2, progress=False), [str(faulty_input)],
                         tmp_path / "local")
    remote = run_pipeline(dedup_pipeline, LocalEngine(workers=2, progress=False), [str(faulty_input)], url)
    assert published(url, tmp_path / "got") == local_output(tmp_path / "local")
    assert {k: v for k, v in remote.items() if k not in ("elapsed_s", "samples_per_s")} == \
        {k: v for k, v in local.items() if k not in ("elapsed_s", "samples_per_s")}
    assert "duplicate" in {r["reason"] for r in pq.read_table(tmp_path / "local" / "rejected.parquet").to_pylist()}
    # only what curate publishes, whole: no _work/ besides the commit marker, no temporaries
    assert object_names(url) == published_names(tmp_path / "local")
    run = json.loads(read_bytes(f"{url}/_work/run.json"))
    assert run["complete"] and run == json.loads((tmp_path / "local" / "_work" / "run.json").read_text())
    # the default staging folder: under the user's cache, named by the URL
    staging = tmp_path / "cache" / "curate" / "staging"
    (folder,) = staging.iterdir()
    assert json.loads((folder / "_work" / "run.json").read_text())["complete"]
    # a finished published run is reused: its stats come from the URL, and nothing runs (no staging again)
    shutil.rmtree(staging)
    again = run_pipeline(dedup_pipeline, LocalEngine(workers=1, progress=False), [str(faulty_input)], url + "/")
    assert again.pop("resumed_complete") and again == json.loads(read_bytes(f"{url}/stats.json"))
    assert not staging.exists()


def test_a_killed_run_into_s3_resumes_from_staging(faulty_input, bucket, tmp_path):
    recipe = tmp_path / "killed.yaml"
    recipe.write_text(PUBLISHED_PIPELINE.replace("batch_size: 16", "batch_size: 4"))
    run_pipeline(load_pipeline(recipe), LocalEngine(workers=1, progress=False), [str(faulty_input)],
                 tmp_path / "reference")
    url, staging = f"{bucket}/killed", tmp_path / "staging"
    command = [sys.executable, "-m", "curate.cli", "run", str(recipe), "--input", str(faulty_input), "--output", url,
               "--staging", str(staging), "--workers", "1", "--quiet"]
    kill_after_first_task(command, staging)
    assert object_names(url) == {"_work/run.json"} and not json.loads(read_bytes(f"{url}/_work/run.json"))["complete"]
    done = {p: p.stat().st_mtime_ns for p in (staging / "_work" / "done").glob("*.json")}
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"stats:   {url}/stats.json" in rerun.stdout
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the tasks finished before the kill were not redone
    assert published(url, tmp_path / "got") == local_output(tmp_path / "reference")


def test_an_interrupted_publish_is_redone(dedup_pipeline, faulty_input, bucket, tmp_path, monkeypatch):
    import curate.io.publish as publish

    run_pipeline(dedup_pipeline, LocalEngine(workers=2, progress=False), [str(faulty_input)], tmp_path / "local")
    url, staging = f"{bucket}/out", tmp_path / "staging"
    uploads, upload = [], publish._upload

    def failing_upload(path, target):  # the connection drops on the third object
        uploads.append(target)
        if len(uploads) == 3:
            raise ConnectionError(f"lost {target}")
        upload(path, target)

    monkeypatch.setattr(publish, "_upload", failing_upload)
    with pytest.raises(ConnectionError, match="lost"):
        run_pipeline(dedup_pipeline, LocalEngine(workers=2, progress=False), [str(faulty_input)], url, staging=staging)
    assert not json.loads(read_bytes(f"{url}/_work/run.json"))["complete"]  # not committed
    assert 1 < len(object_names(url)) < len(published_names(tmp_path / "local"))
    monkeypatch.setattr(publish, "_upload", upload)
    done = {p: p.stat().st_mtime_ns for p in (staging / "_work" / "done").glob("*.json")}
    stats = run_pipeline(dedup_pipeline, LocalEngine(workers=2, progress=False), [str(faulty_input)], url,
                         staging=staging)
    assert "resumed_complete" not in stats  # published now, not found published
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the run itself was finished: only the publish ran
    assert published(url, tmp_path / "got") == local_output(tmp_path / "local")
    assert json.loads(read_bytes(f"{url}/_work/run.json"))["complete"]


def test_a_prefix_holding_another_run_is_refused_and_overwrite_keeps_other_objects(faulty_input, bucket, tmp_path):
    faults = [str(faulty_input / "b.parquet")]  # a few rows: these runs are about the prefix, not the samples
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(PUBLISHED_PIPELINE)
    second.write_text(PUBLISHED_PIPELINE.replace("min_words: 2", "min_words: 6"))
    url = f"{bucket}/out"
    fs = s3fs.S3FileSystem()
    theirs = {f"{url}/notes.txt": b"mine", f"{url}/shards/README": b"mine too", f"{url}/_work/other.json": b"{}"}
    for path, data in theirs.items():
        fs.pipe(path, data)

    def run(recipe, overwrite=False, inputs=faults, out=url):
        return run_pipeline(load_pipeline(recipe), LocalEngine(workers=1, progress=False), inputs, out, overwrite,
                            tmp_path / f"staging-{recipe.stem}")

    with pytest.raises(FileExistsError, match=rf"{url} holds objects that are not a curate run; pass --overwrite"):
        run(first)
    run(first, overwrite=True)  # none of curate's names was there: nothing of the user's is touched
    assert json.loads(read_bytes(f"{url}/_work/run.json"))["complete"]
    first_stats = json.loads(read_bytes(f"{url}/stats.json"))
    with pytest.raises(FileExistsError, match=rf"{url} holds a run of a different pipeline or input; pass --overwrite"):
        run(second)
    second_stats = run(second, overwrite=True)
    assert json.loads(read_bytes(f"{url}/stats.json")) == second_stats != first_stats
    assert {path: fs.cat(path) for path in theirs} == theirs
    assert object_names(url) == published_names(tmp_path / "staging-second") | {"notes.txt", "shards/README",
                                                                                "_work/other.json"}
    # curate's names without a run.json are the user's: refused even with --overwrite
    fs.pipe(f"{bucket}/plain/stats.json", b"{}")
    with pytest.raises(FileExistsError, match=r"plain is not a curate run .* holds s3://.*/plain/stats\.json"):
        run(first, overwrite=True, out=f"{bucket}/plain")
    # an output prefix that holds an input is refused, overwrite or not
    upload(faulty_input / "b.parquet", f"{url}/in/b.parquet")
    with pytest.raises(FileExistsError, match=rf"output {url} contains input {url}/in/b\.parquet"):
        run(second, overwrite=True, inputs=[f"{url}/in/b.parquet"])
    # --staging goes with an output URL only
    with pytest.raises(ConfigError, match="a staging folder goes with an output URL"):
        run(first, out=str(tmp_path / "local"))
