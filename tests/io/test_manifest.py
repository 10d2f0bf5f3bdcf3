"""Verified reuse: a finished run's manifest (_SUCCESS) lists every output file with its size and
checksum and is written last, after the files and folders it vouches for are fsynced; a reused run
is checked against it (a deleted, truncated or altered file makes the run run again, locally and at
an output URL) and `curate verify` says what is wrong; the fingerprint sees input content and
curate's version. Real runs on the real pool, real files and moto's S3 server."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
import xxhash

from curate.engines.layout import RunLayout, fingerprint
from curate.engines.local import LocalEngine
from curate.io.manifest import SUCCESS
from curate.io.paths import read_bytes
from curate.io.readers.tasks import plan_inputs
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline
from tests.engines.helpers import read_output

RECIPE = """
name: verified
batch_size: 16
stages:
  - stage: decode
  - stage: caption
    min_words: 2
  - stage: exact_dedup
"""


@pytest.fixture()
def recipe(tmp_path) -> Path:
    path = tmp_path / "verified.yaml"
    path.write_text(RECIPE)
    return path


def curate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def run_command(recipe: Path, inputs: Path, out, *extra: str) -> subprocess.CompletedProcess:
    return curate("run", recipe, "--input", inputs, "--output", out, "--workers", "1", "--quiet", *extra)


def written_files(out: Path) -> set[str]:
    """Every file a run left in `out`, but its resume state (_work/) and the manifest itself."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.is_file() and not p.relative_to(out).as_posix().startswith("_work/")} - {SUCCESS}


def test_the_manifest_lists_every_output_file_with_its_size_and_checksum(recipe, faulty_input, tmp_path):
    out = tmp_path / "out"
    run_pipeline(load_pipeline(recipe), LocalEngine(2, progress=False), [str(faulty_input)], out)
    manifest = json.loads((out / SUCCESS).read_text())
    assert set(manifest["files"]) == written_files(out)
    assert {"stats.json", "report.html", "uids.npy"} <= set(manifest["files"])
    for prefix in ("shards/part-", "parquet/part-", "rejected.parquet"):  # the ledger: a file or a folder of parts
        assert any(n.startswith(prefix) for n in manifest["files"]), prefix
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry == {"size": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}, name
    # the part files were hashed by the tasks that wrote them (in their markers), not re-read at the end
    markers = (out / "_work" / "done").glob("pass*.json")
    hashed = {n for m in markers for n in json.loads(m.read_text()).get("files", {})}
    parts = ("shards/part-", "parquet/part-", "rejected.parquet/")
    assert {n for n in manifest["files"] if n.startswith(parts)} <= hashed
    run = json.loads((out / "_work" / "run.json").read_text())
    assert run["complete"] and manifest["fingerprint"] == run["fingerprint"] and manifest["curate"]
    assert (out / SUCCESS).stat().st_mtime_ns >= max((out / n).stat().st_mtime_ns for n in manifest["files"])


def test_a_deleted_or_truncated_file_is_named_by_verify_and_the_run_is_redone(recipe, faulty_input, tmp_path):
    out = tmp_path / "out"
    assert run_command(recipe, faulty_input, out).returncode == 0
    before = read_output(out)
    assert curate("verify", out).returncode == 0
    shard = sorted((out / "shards").glob("part-*.tar"))[0]
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    (out / "parquet" / "part-00001.parquet").unlink()
    checked = curate("verify", out)
    assert checked.returncode == 1
    name = shard.relative_to(out).as_posix()
    assert f"{out}: {name}: {size // 2} bytes, the manifest says {size} (truncated)" in checked.stdout
    assert f"{out}: parquet/part-00001.parquet: missing" in checked.stdout
    rerun = run_command(recipe, faulty_input, out)
    assert rerun.returncode == 0, rerun.stderr
    assert "already holds" not in rerun.stdout and "but not as its manifest says" in rerun.stderr
    assert read_output(out) == before
    assert curate("verify", out).returncode == 0


def test_altered_bytes_of_the_same_size_are_found_by_checksums(recipe, faulty_input, tmp_path):
    out = tmp_path / "out"
    assert run_command(recipe, faulty_input, out).returncode == 0
    before = read_output(out)
    report = out / "report.html"
    data = bytearray(report.read_bytes())
    data[len(data) // 2] ^= 0xFF
    report.write_bytes(bytes(data))
    assert curate("verify", out, "--sizes-only").returncode == 0  # sizes alone cannot tell
    checked = curate("verify", out)
    assert checked.returncode == 1 and "report.html: checksum" in checked.stdout
    assert "already holds this finished run" in run_command(recipe, faulty_input, out).stdout  # sizes only: reused
    rerun = run_command(recipe, faulty_input, out, "--verify")
    assert rerun.returncode == 0 and "already holds" not in rerun.stdout, rerun.stderr
    assert read_output(out) == before and curate("verify", out).returncode == 0


def test_verify_without_a_manifest_says_so(tmp_path):
    (tmp_path / "stats.json").write_text("{}")
    checked = curate("verify", tmp_path)
    assert checked.returncode == 1 and f"{tmp_path}: no {SUCCESS}: the run did not finish" in checked.stdout


def test_the_fingerprint_sees_a_rewrite_that_keeps_size_and_mtime_and_curates_version(recipe, faulty_input, tmp_path,
                                                                                      monkeypatch):
    out = tmp_path / "out"
    pipeline = load_pipeline(recipe)
    run_pipeline(pipeline, LocalEngine(1, progress=False), [str(faulty_input)], out)
    source = faulty_input / "a.parquet"
    stat = source.stat()
    chunk = pq.ParquetFile(source).metadata.row_group(0).column(3)  # image bytes (stored uncompressed)
    assert chunk.path_in_schema == "image"
    data = bytearray(source.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0xFF
    source.write_bytes(bytes(data))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size and source.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(FileExistsError, match="holds a run of a different pipeline or input"):
        run_pipeline(pipeline, LocalEngine(1, progress=False), [str(faulty_input)], out)
    tasks = plan_inputs([str(faulty_input)])
    same = fingerprint(pipeline.raw, tasks)
    monkeypatch.setattr("curate.engines.layout.curate_version", lambda: "999.0")
    assert fingerprint(pipeline.raw, tasks) != same


def test_files_and_folders_are_fsynced_before_the_renames_that_commit_them(recipe, faulty_input, tmp_path,
                                                                           monkeypatch):
    """The real fsync and rename, recorded in order (an in-process run): each task's parts before
    its marker's rename, every output file and folder before the manifest's, which comes last."""
    events, fsync, replace = [], os.fsync, os.replace

    def recorded_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_replace(source, target):
        replace(source, target)
        events.append(("rename", str(target)))

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    out = (tmp_path / "out").resolve()
    run_pipeline(load_pipeline(recipe), LocalEngine(1, progress=False), [str(faulty_input)], out)
    layout = RunLayout(out)

    def synced_before(path, index: int) -> bool:
        return ("fsync", str(path)) in events[:index]

    def rename(path) -> int:
        return max(i for i, event in enumerate(events) if event == ("rename", str(path)))

    assert [e for e in events if e[0] == "rename"][-1] == ("rename", str(out / SUCCESS))  # the manifest last,
    assert events[-1] == ("fsync", str(out))  # and its name made durable
    for task in range(5):  # a.parquet's 4 row groups and b.parquet
        marker = rename(layout.marker(0, task))
        for path in (layout.intermediate(0, task), layout.ledger_part(0, task), layout.intermediate(0, task).parent,
                     layout.ledger_part(0, task).parent):
            assert synced_before(path, marker), path
    manifest = rename(out / SUCCESS)
    for name in json.loads((out / SUCCESS).read_text())["files"]:
        assert synced_before(out / name, manifest) and synced_before((out / name).parent, manifest), name


def test_a_published_run_that_lost_an_object_is_published_again(recipe, faulty_input, bucket, tmp_path):
    url, staging = f"{bucket}/verified", tmp_path / "staging"
    assert run_command(recipe, faulty_input, url, "--staging", staging).returncode == 0
    manifest = json.loads(read_bytes(f"{url}/{SUCCESS}"))
    assert manifest == json.loads((staging / SUCCESS).read_text())
    assert curate("verify", url).returncode == 0
    shard = next(n for n in manifest["files"] if n.startswith("shards/part-"))
    s3fs.S3FileSystem().rm(f"{url}/{shard}".removeprefix("s3://"))
    checked = curate("verify", url)
    assert checked.returncode == 1 and f"{url}: {shard}: missing" in checked.stdout
    rerun = run_command(recipe, faulty_input, url, "--staging", staging)
    assert rerun.returncode == 0 and "publishing it again" in rerun.stderr, rerun.stderr
    assert read_bytes(f"{url}/{shard}") == (staging / shard).read_bytes()
    assert curate("verify", url).returncode == 0
    shutil.rmtree(staging)  # a finished, whole publish is reused without its staging folder
    again = run_command(recipe, faulty_input, url, "--staging", staging)
    assert again.returncode == 0 and "already holds this finished run" in again.stdout
