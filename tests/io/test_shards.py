"""Shards as trainers stream them: a run's tasks' tars moved or resharded into shards of
`samples_per_shard` samples (byte copies of whole samples, resumable a shard at a time), with
open_clip's sizes.json beside them; open_clip_train streams the result with no size flags."""

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.engines.local import LocalEngine
from curate.io.shards import SIZES_FILE, reshard, shard_name
from curate.io.writers import PartWriter
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline
from tests.io.open_clip_runner import train_open_clip

ROOT = Path(__file__).parents[2]
TASK_ROWS = [9, 0, 23, 1, 14]  # an empty task and a one-sample one among them


def task_tars(folder: Path, table: pa.Table, rows: list[int]) -> list[Path]:
    """Tars as a run's tasks write them (PartWriter), of `rows` consecutive samples each."""
    tars, start = [], 0
    for task, count in enumerate(rows):
        tars.append(folder / "tars" / f"part-{task:05d}.tar")
        with PartWriter(folder / "parquet" / f"part-{task:05d}.parquet", tars[-1]) as writer:
            writer.write(table.slice(start, count))
        start += count
    return tars


def members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def keys(names: list[str]) -> list[str]:
    return list(dict.fromkeys(name.split(".", 1)[0] for name in names))


def test_reshard_copies_whole_samples_into_shards_of_n(pool_table, tmp_path):
    table = pool_table.select(["uid", "url", "text", "image"])
    tars = task_tars(tmp_path, table, TASK_ROWS)
    expected = [name for tar in tars for name in members(tar)]
    single = tars[2].read_bytes()
    out = tmp_path / "shards"
    committed = list(reshard(tars, out, 10, tmp_path / "progress.json"))
    assert committed == [(shard_name(i), n) for i, n in enumerate([10, 10, 10, 10, 7])]
    assert json.loads((out / SIZES_FILE).read_text()) == dict(committed)
    shards = [out / shard_name(i) for i in range(5)]
    got = [members(shard) for shard in shards]
    assert [len(keys(names)) for names in got] == [10, 10, 10, 10, 7]
    assert [name for names in got for name in names] == expected  # every member, in order, each sample whole
    assert keys(expected) == table["uid"].slice(0, sum(TASK_ROWS)).to_pylist()
    with tarfile.open(shards[1]) as tar:  # payloads are the samples' own
        first = keys(got[1])[0]
        assert tar.extractfile(f"{first}.txt").read().decode() == table["text"][10].as_py()
    assert not any(tar.exists() for tar in tars)  # every source was consumed
    # a shard of one whole task is byte for byte the task's tar (the end-of-archive padding included)
    again = task_tars(tmp_path / "again", table.slice(sum(TASK_ROWS[:2])), [TASK_ROWS[2]])
    assert again[0].read_bytes() == single
    list(reshard(again, tmp_path / "one", 100, tmp_path / "one.json"))
    assert (tmp_path / "one" / shard_name(0)).read_bytes() == single


def test_a_reshard_cut_short_resumes_at_its_last_shard_with_the_same_bytes(pool_table, tmp_path):
    table = pool_table.select(["uid", "url", "text", "image"])
    whole = tmp_path / "whole"
    list(reshard(task_tars(whole, table, TASK_ROWS), whole / "shards", 4, whole / "progress.json"))
    cut = tmp_path / "cut"
    tars = task_tars(cut, table, TASK_ROWS)
    steps = reshard(tars, cut / "shards", 4, cut / "progress.json")
    assert [next(steps) for _ in range(3)] == [(shard_name(i), 4) for i in range(3)]
    steps.close()  # stopped between two commits, as a killed run is
    assert not (cut / "shards" / SIZES_FILE).exists()
    assert [tar.exists() for tar in tars] == [False, False, True, True, True]  # tasks 0-1 are in shards 0-2
    resumed = list(reshard(tars, cut / "shards", 4, cut / "progress.json"))
    assert resumed[0][0] == shard_name(3)
    names = sorted(p.name for p in (whole / "shards").iterdir())
    assert sorted(p.name for p in (cut / "shards").iterdir()) == names
    assert all((cut / "shards" / n).read_bytes() == (whole / "shards" / n).read_bytes() for n in names)
    with pytest.raises(ValueError, match="progress.json: a resharding of 5 tars into 4 samples a shard, not 5 into 3"):
        next(reshard(tars, cut / "shards", 3, cut / "progress.json"))


def test_reshard_refuses_a_tar_it_did_not_write(tmp_path):
    foreign = tmp_path / "gnu.tar"
    with tarfile.open(foreign, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("a" * 120 + ".txt")  # a GNU long name: not a USTAR member
        tar.addfile(info)
    with pytest.raises(ValueError, match=r"gnu\.tar: byte 0: not a regular USTAR member"):
        list(reshard([foreign], tmp_path / "out", 2, tmp_path / "p.json"))


def run(out: Path, inputs, **settings) -> dict:
    pipeline = load_pipeline(ROOT / "pipelines" / "no_filter.yaml", [f"{k}={v}" for k, v in settings.items()])
    return run_pipeline(pipeline, LocalEngine(1, progress=False), inputs, out)


def kept_uids(out: Path) -> list[str]:
    return [u for p in sorted((out / "parquet").glob("*.parquet")) for u in pq.read_table(p)["uid"].to_pylist()]


def test_a_run_writes_sizes_json_and_shards_of_samples_per_shard(pool_root, tmp_path):
    inputs = [str(pool_root / "pool")]
    plain = run(tmp_path / "plain", inputs)
    parts = sorted((tmp_path / "plain" / "parquet").glob("*.parquet"))
    sizes = json.loads((tmp_path / "plain" / "shards" / SIZES_FILE).read_text())
    assert sizes == {p.with_suffix(".tar").name: pq.read_metadata(p).num_rows for p in parts}  # a shard per task
    assert len(sizes) == 4 and sum(sizes.values()) == plain["kept"]
    resharded = run(tmp_path / "n", inputs, samples_per_shard=64)
    shards = tmp_path / "n" / "shards"
    sizes = json.loads((shards / SIZES_FILE).read_text())
    kept = resharded["kept"]
    assert kept == plain["kept"] and kept > 128
    assert sizes == {shard_name(i): min(64, kept - 64 * i) for i in range(-(-kept // 64))}
    order = [key for name in sizes for key in keys(members(shards / name))]
    assert order == kept_uids(tmp_path / "n")  # the kept samples in the Parquet parts' order
    assert sorted(p.name for p in shards.iterdir()) == sorted([*sizes, SIZES_FILE])
    assert not (tmp_path / "n" / "_work" / "tars").exists()  # the tasks' tars and the progress file are gone


@pytest.mark.slow
def test_open_clip_train_streams_a_run_with_only_train_data(pool_table, tmp_path):
    data = tmp_path / "input"
    data.mkdir()
    pq.write_table(pool_table.slice(0, 96).select(["uid", "url", "text", "image"]), data / "a.parquet",
                   row_group_size=40)
    out = tmp_path / "out"
    assert run(out, [str(data)], samples_per_shard=32)["kept"] == 96
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == [shard_name(i) for i in range(3)]
    pattern = str(out / "shards" / "part-{00000..00002}.tar")
    returncode, log, steps = train_open_clip(pattern, tmp_path)
    assert returncode == 0, log[-3000:]
    assert steps and {total for _, total in steps} == {96}, steps  # the epoch's size: sizes.json's sum
    assert steps[-1][0] == 96 and len(steps) == 96 // 16, steps  # 6 steps of 16 samples, every one trained
    (out / "shards" / SIZES_FILE).unlink()  # without the size file, open_clip_train needs --train-num-samples
    returncode, log, _ = train_open_clip(pattern, tmp_path, "--name", "again")
    assert returncode != 0 and "--train-num-samples" in log
