"""The local engine on a real pool with real faults: accounting, worker-count invariance, resume."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from curate.engines.local import LocalEngine, share_cores
from curate.engines.plan import plan_passes, run_pass_on_batch
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline
from curate.stage import MapStage, StageConfig, Verdict
from tests.engines.helpers import kill_after_first_task, read_output

RECIPES = Path(__file__).parents[2] / "pipelines"
FULL = """
name: full
batch_size: 16
stages:
  - stage: decode
  - stage: caption
    min_words: 2
  - stage: language
    languages: [en]
  - stage: image_size
    min_side: 32
  - stage: exact_dedup
  - stage: near_dedup
    radius: 4
  - stage: file_size
    min_bytes: 2000
"""


@pytest.fixture()
def full_pipeline(tmp_path):
    path = tmp_path / "full.yaml"
    path.write_text(FULL)
    return load_pipeline(path)


def input_uids(folder: Path) -> list[str]:
    return [u for p in sorted(folder.glob("*.parquet")) for u in pq.read_table(p, columns=["uid"])["uid"].to_pylist()]


def test_every_sample_is_kept_or_in_the_ledger(full_pipeline, faulty_input, tmp_path):
    stats = run_pipeline(full_pipeline, LocalEngine(progress=False), [str(faulty_input)], tmp_path / "out")
    out = read_output(tmp_path / "out")
    kept = [r["uid"] for r in out["kept"]]
    rejected = [r["uid"] for r in out["ledger"]]
    everything = input_uids(faulty_input)
    assert len(kept) + len(rejected) == len(everything) == stats["input"]
    assert sorted(kept + rejected) == sorted(everything)
    reasons = {r["uid"]: r["reason"] for r in out["ledger"]}
    for i, reason in enumerate(["missing_image", "empty_image", "corrupt_image", "truncated_image",
                                "decompression_bomb", "truncated_image"], start=1):
        assert reasons[f"{i:032x}"] == reason
    assert reasons[f"{99:032x}"] == "empty_caption"
    assert {"too_few_words", "language", "duplicate"} <= set(reasons.values())
    assert {r["stage"] for r in out["ledger"]} <= {"decode", "caption", "language", "image_size", "exact_dedup",
                                                    "near_dedup", "file_size"}
    # carried columns and stage columns reach the kept Parquet
    assert {"category", "lang", "lang_score", "phash", "width", "height"} <= set(out["kept"][0])


def test_one_and_two_workers_give_identical_output(full_pipeline, faulty_input, tmp_path):
    run_pipeline(full_pipeline, LocalEngine(workers=1, progress=False), [str(faulty_input)], tmp_path / "w1")
    run_pipeline(full_pipeline, LocalEngine(workers=2, progress=False), [str(faulty_input)], tmp_path / "w2")
    one, two = read_output(tmp_path / "w1"), read_output(tmp_path / "w2")
    assert one == two
    assert len(one["tars"]) == 5  # one part per input task: 4 row groups + the faults file


def test_killed_run_resumes_to_the_same_result(faulty_input, tmp_path):
    recipe = tmp_path / "full.yaml"
    recipe.write_text(FULL.replace("batch_size: 16", "batch_size: 4"))
    run_pipeline(load_pipeline(recipe), LocalEngine(progress=False), [str(faulty_input)], tmp_path / "reference")
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "curate.cli", "run", str(recipe), "--input", str(faulty_input),
               "--output", str(out), "--workers", "1", "--quiet"]
    kill_after_first_task(command, out)
    finished_before = len(list((out / "_work" / "done").glob("*.json")))
    assert finished_before >= 1
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert read_output(out) == read_output(tmp_path / "reference")
    assert not list(out.rglob("*.tmp"))


def test_finished_run_is_not_redone_and_other_runs_are_refused(full_pipeline, faulty_input, tmp_path):
    out = tmp_path / "out"
    first = run_pipeline(full_pipeline, LocalEngine(progress=False), [str(faulty_input)], out)
    again = run_pipeline(full_pipeline, LocalEngine(progress=False), [str(faulty_input)], out)
    assert again["resumed_complete"] and again["kept"] == first["kept"]
    other = load_pipeline(RECIPES / "datacomp_basic.yaml")
    with pytest.raises(FileExistsError, match="different pipeline"):
        run_pipeline(other, LocalEngine(progress=False), [str(faulty_input)], out)
    stats = run_pipeline(other, LocalEngine(progress=False), [str(faulty_input)], out, overwrite=True)
    assert stats["pipeline"] == "datacomp_basic"


class DropsARow(MapStage):
    """A broken stage: it loses a row instead of rejecting it."""

    name = "drops_a_row"
    Config = StageConfig

    def process(self, table):
        return Verdict(table.slice(1))


def test_a_stage_that_loses_a_row_is_an_error(pool_table):
    stages = [DropsARow(StageConfig())]
    [single_pass] = plan_passes(stages)
    with pytest.raises(RuntimeError, match="every row must be kept or rejected"):
        run_pass_on_batch(stages, single_pass, Verdict(pool_table.slice(0, 4)), {}, None, read_step=True)


def test_a_worker_gets_its_share_of_the_cores():
    """share_cores (the local pool's initializer) limits every math thread pool in the worker,
    numpy's BLAS loaded before it included, and FAISS's OpenMP loaded after it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"), initializer=share_cores,
                             initargs=(1,)) as pool:
        pools, faiss_threads = pool.submit(_thread_counts).result()
    assert pools and all(count == 1 for count in pools.values()), pools
    assert faiss_threads == 1


def _thread_counts() -> tuple[dict, int]:
    import faiss
    from threadpoolctl import threadpool_info

    return {p["filepath"]: p["num_threads"] for p in threadpool_info()}, faiss.omp_get_max_threads()


def test_workers_exit_when_only_the_parent_is_killed(faulty_input, tmp_path):
    """SIGKILL to the run's process alone, not its group: its pool workers (forked) exit within
    seconds, where they used to wait on the pool's queue for ever (300 MB each)."""
    recipe = tmp_path / "full.yaml"
    recipe.write_text(FULL.replace("batch_size: 16", "batch_size: 4"))
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", str(recipe), "--input", str(faulty_input),
                            "--output", str(out), "--workers", "2", "--quiet"])
    workers = _workers_of(run, out)
    try:
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers outlived their parent: {alive}"
    finally:
        for worker in workers:
            _kill(worker)
    assert not (out / "stats.json").exists(), "the run finished before the kill; the test proves nothing"


def _workers_of(run: subprocess.Popen, out: Path) -> list[psutil.Process]:
    """The worker processes of a running `curate run`, once its first task is done."""
    deadline = time.time() + 120
    while time.time() < deadline:
        assert run.poll() is None, "the run ended before its workers could be seen"
        children = psutil.Process(run.pid).children()
        if len(children) >= 2 and list((out / "_work" / "done").glob("pass0-*.json")):
            return children
        time.sleep(0.01)
    pytest.fail("no two workers and a finished task within 120 s")


def _kill(process: psutil.Process) -> None:
    try:
        process.kill()
    except psutil.NoSuchProcess:
        pass


POOL_PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from curate.engines.local import start_worker
pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1]), initializer=start_worker,
                           initargs=(1, os.getpid()))
print(*{pool.submit(os.getpid).result() for _ in range(20)}, flush=True)  # the workers that ran a task
time.sleep(600)
"""


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_pool_worker_exits_with_its_parent(method):
    """The local pool's initializer on either start method: with forkserver the workers' parent is
    the server process, which exits once the run's process is gone, and then so do they."""
    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT, method], stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    workers = [psutil.Process(pid) for pid in pids]
    try:
        assert workers and all(w.is_running() for w in workers)
        parent.kill()
        parent.wait()
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers outlived their parent: {alive}"
    finally:
        for worker in workers:
            _kill(worker)
