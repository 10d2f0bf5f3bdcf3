"""The local engine on a real pool with real faults: accounting, worker-count invariance, resume."""

import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.engines.plan import plan_passes, run_pass_on_batch
from curate.engines.local import LocalEngine, share_cores
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
