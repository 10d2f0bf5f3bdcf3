"""One run at a time in an output folder: real `curate run` processes against one output, a lock
held by another real process, a stale lock of a dead process, and the lock's release when a run
fails or is interrupted."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.engines.lock import LOCK_FILE, output_lock

RECIPE = """
name: slow
batch_size: 4
stages:
  - stage: decode
  - stage: caption
    min_words: 2
  - stage: language
    languages: [en]
  - stage: exact_dedup
"""
HOLD = """import sys, time
from curate.engines.lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture()
def recipe(tmp_path) -> Path:
    path = tmp_path / "slow.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture()
def long_input(tmp_path, pool_table) -> Path:
    """The real pool 6 times (about 850 samples; each copy with its own urls, so its own uids): a run
    of several seconds at 4 rows a batch."""
    base = pool_table.select(["url", "text", "image"])
    copies = [base.set_column(0, "url", pc.binary_join_element_wise(base.column("url"), f"?copy={k}", ""))
              for k in range(6)]
    folder = tmp_path / "long"
    folder.mkdir()
    pq.write_table(pa.concat_tables(copies), folder / "pool.parquet", row_group_size=160)
    return folder


def input_rows(folder: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet"))


def curate_run(recipe: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "curate.cli", "run", str(recipe), "--input", str(inputs), "--output", str(out),
            "--workers", "1", "--quiet", *extra]


def wait_for_owner(lock: Path, pid: int, process: subprocess.Popen) -> None:
    """Wait until `lock` names `pid` as its owner (while `process` runs)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it took the lock"
        try:
            if json.loads(lock.read_text()).get("pid") == pid:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    pytest.fail(f"{lock} never named pid {pid}")


def test_two_concurrent_runs_into_one_output_one_runs_and_the_other_is_refused(recipe, long_input, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(curate_run(recipe, long_input, out), stderr=subprocess.PIPE, text=True)
    try:
        wait_for_owner(out / LOCK_FILE, first.pid, first)
        second = subprocess.run(curate_run(recipe, long_input, out), capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second tried: the test proves nothing"
        assert second.returncode == 2
        line = f"Error: {out} is in use by another curate run (pid {first.pid} on {socket.gethostname()}, started "
        assert second.stderr.startswith(line) and second.stderr.count("\n") == 1, second.stderr
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input"] == input_rows(long_input) == stats["kept"] + stats["rejected"]
    assert not (out / LOCK_FILE).exists()
    assert subprocess.run([sys.executable, "-m", "curate.cli", "verify", str(out)]).returncode == 0


@pytest.mark.parametrize("to_url", [False, True], ids=["folder", "s3-staging"])
def test_a_held_lock_refuses_a_run_naming_its_owner(recipe, long_input, tmp_path, to_url):
    """A lock held by another live process (here a plain one, not a run) refuses the run before it
    touches anything; an output URL is locked in its local staging folder, before the bucket is asked."""
    locked = tmp_path / ("staging" if to_url else "out")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(locked)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        extra = ("--staging", str(locked)) if to_url else ()
        target = "s3://no-such-bucket/run" if to_url else locked
        refused = subprocess.run(curate_run(recipe, long_input, target, *extra), capture_output=True, text=True,
                                 timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2, refused.stderr
    assert f"{locked} is in use by another curate run (pid {holder.pid} on {socket.gethostname()}" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert sorted(p.name for p in locked.iterdir()) == [LOCK_FILE]  # nothing else written


def test_a_stale_lock_is_taken_over_and_a_live_owner_is_honoured(recipe, pool_root, tmp_path):
    """A lock file naming a process of this host that has exited (no flock held: it died) is taken
    over; one naming a live process is honoured even unflocked (a file system without flock), unless
    that pid now belongs to a process started later (the owner died and its pid was reused)."""
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = psutil.Process()
    owners = {"dead": {"pid": dead.pid, "create_time": time.time() - 5},
              "live": {"pid": me.pid, "create_time": me.create_time()},
              "reused": {"pid": me.pid, "create_time": me.create_time() - 100}}
    for name, owner in owners.items():
        (out / LOCK_FILE).write_text(json.dumps({**owner, "host": socket.gethostname(), "started": name}))
        run = subprocess.run(curate_run(recipe, pool_root / "pool", out), capture_output=True, text=True, timeout=300)
        if name == "live":
            assert run.returncode == 2 and f"(pid {me.pid} on {socket.gethostname()}, started live)" in run.stderr
            assert (out / LOCK_FILE).exists()
        else:
            assert run.returncode == 0, run.stderr
            assert not (out / LOCK_FILE).exists()
    assert json.loads((out / "stats.json").read_text())["input"] == input_rows(pool_root / "pool")


def test_another_hosts_lock_is_not_taken_over(recipe, pool_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "some-other-node", "create_time": 0, "started": "x"}))
    run = subprocess.run(curate_run(recipe, pool_root / "pool", out), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "(pid 1 on some-other-node, started x)" in run.stderr and f"delete {out / LOCK_FILE}" in run.stderr


TRY = """import sys
from curate.engines.lock import OutputLocked, output_lock
try:
    with output_lock(sys.argv[1]):
        print("took it")
except OutputLocked as exc:
    print(exc)
"""


def try_lock(folder: Path) -> str:
    """What another process gets when it tries to take `folder`'s lock."""
    return subprocess.run([sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True,
                          timeout=120).stdout.strip()


def test_the_lock_holds_against_other_processes_and_is_released_on_an_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a stage failed"):
        with output_lock(out) as lock:
            assert lock == out / LOCK_FILE and json.loads(lock.read_text())["pid"] == os.getpid()
            assert try_lock(out).startswith(f"{out} is in use by another curate run (pid {os.getpid()} on ")
            (out / "partial.json").write_text("{}")
            raise RuntimeError("a stage failed")
    assert not (out / LOCK_FILE).exists() and try_lock(out) == "took it"
    assert (out / "partial.json").exists()  # the folder stays with what the block wrote
    with output_lock(tmp_path / "fresh"):
        pass
    assert not (tmp_path / "fresh").exists()  # a folder the lock made, left empty, goes again


def test_the_lock_is_released_on_keyboard_interrupt_and_the_rerun_resumes(recipe, long_input, tmp_path):
    out = tmp_path / "out"
    command = curate_run(recipe, long_input, out)
    # a shell runs a background job (`bash .ci/run &`) with SIGINT ignored, which the run would inherit
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not list((out / "_work" / "done").glob("pass0-*.json")) and time.time() < deadline:
            assert run.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.01)
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == run.pid  # held while it runs
        run.send_signal(signal.SIGINT)
        code = run.wait(timeout=120)
    finally:
        run.kill()
    assert not (out / "stats.json").exists(), "the run finished before the interrupt; the test proves nothing"
    assert code != 0
    assert not (out / LOCK_FILE).exists()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((out / "stats.json").read_text())["input"] == input_rows(long_input)


@pytest.mark.distributed
@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_a_ray_or_spark_run_holds_the_lock(engine, recipe, long_input, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([*curate_run(recipe, long_input, out), "--engine", engine], stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list((out / "_work" / "done").glob("pass0-*.json")) and time.time() < deadline:
            assert first.poll() is None, "the run ended before its first task"
            time.sleep(0.05)
        second = subprocess.run(curate_run(recipe, long_input, out), capture_output=True, text=True, timeout=300)
        running = first.poll() is None
        assert first.wait(timeout=600) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert running, "the first run ended before the second tried: the test proves nothing"
    assert second.returncode == 2 and f"is in use by another curate run (pid {first.pid}" in second.stderr
    assert not (out / LOCK_FILE).exists()
