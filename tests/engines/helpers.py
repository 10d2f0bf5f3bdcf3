"""Helpers shared by the engine tests."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def read_output(out: Path) -> dict:
    """A run's results without what may differ between equal runs (timings, engine, workers)."""
    kept = pa.concat_tables(pq.read_table(p) for p in sorted((out / "parquet").glob("*.parquet")))
    stats = json.loads((out / "stats.json").read_text())
    for key in ("elapsed_s", "samples_per_s", "workers", "engine"):
        stats.pop(key)
    return {"kept": kept.to_pylist(), "ledger": pq.read_table(out / "rejected.parquet").to_pylist(), "stats": stats,
            "tars": sorted(p.name for p in (out / "shards").glob("*.tar"))}


FLOAT_TOLERANCE = 1e-5  # model scores: thread counts differ between engines' workers, so sums round differently


def assert_same_output(got: dict, expected: dict) -> None:
    """Equal outputs: everything exact except float columns, which agree within FLOAT_TOLERANCE."""
    assert {k: v for k, v in got.items() if k != "kept"} == {k: v for k, v in expected.items() if k != "kept"}
    assert [r["uid"] for r in got["kept"]] == [r["uid"] for r in expected["kept"]]
    for mine, theirs in zip(got["kept"], expected["kept"]):
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            if isinstance(value, float) or value and isinstance(value, list) and isinstance(value[0], float):
                assert value == pytest.approx(theirs[key], abs=FLOAT_TOLERANCE), (mine["uid"], key, value, theirs[key])
            else:
                assert value == theirs[key], (mine["uid"], key)


def kill_after_first_task(command: list[str], folder: Path, deadline_s: float = 120) -> None:
    """Start `command` (a `curate run`), SIGKILL its process group as soon as a first task of
    pass 0 has its completion marker in `folder`, and every process it started that left the
    group (a Ray or Spark cluster's daemons), and check it really was cut short."""
    process = subprocess.Popen(command, start_new_session=True)
    deadline = time.time() + deadline_s
    while not list((folder / "_work" / "done").glob("pass0-*.json")) and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.01)
    started = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGKILL)
    for child in started:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()
    assert not (folder / "stats.json").exists(), "the run finished before the kill; the test proves nothing"
