"""A Ray or Spark run SIGKILLed mid-pass (driver, workers and the cluster it started) resumes
to exactly the output of an uninterrupted local run: the markers, fit states and part files a
run leaves are engine-neutral (issue 17's crash/resume promise on every engine)."""

import subprocess
import sys

import pytest

from curate.engines.local import LocalEngine
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline
from tests.engines.helpers import kill_after_first_task, read_output
from tests.engines.test_local import FULL


@pytest.mark.slow  # a cluster start-up per run, three runs an engine
@pytest.mark.distributed
@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_a_killed_cluster_run_resumes_to_the_local_result(engine, faulty_input, tmp_path):
    recipe = tmp_path / "full.yaml"
    recipe.write_text(FULL.replace("batch_size: 16", "batch_size: 4"))
    run_pipeline(load_pipeline(recipe), LocalEngine(progress=False), [str(faulty_input)], tmp_path / "reference")
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "curate.cli", "run", str(recipe), "--input", str(faulty_input),
               "--output", str(out), "--engine", engine, "--workers", "2", "--quiet"]
    kill_after_first_task(command, out, deadline_s=600)
    assert list((out / "_work" / "done").glob("pass0-*.json"))
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert read_output(out) == read_output(tmp_path / "reference")
    assert not list(out.rglob("*.tmp"))
