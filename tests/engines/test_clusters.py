"""Real clusters on this machine: `curate run` joins a Ray cluster (head + worker node) and a
Spark standalone cluster (master + worker) by address. Only the processes started here are
stopped, by their process group."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest

from tests.engines.helpers import read_output

pytestmark = pytest.mark.distributed
RECIPES = Path(__file__).parents[2] / "pipelines"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wait_for(check, what: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up in {timeout} s")


def curate_run(engine_args: list[str], input_dir: Path, out: Path,
               env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curate.cli", "run", str(RECIPES / "laion_filter.yaml"), "--input", str(input_dir),
         "--output", str(out), "--quiet", *engine_args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})})


@pytest.fixture()
def reference(faulty_input, tmp_path):
    result = curate_run(["--engine", "local", "--workers", "1"], faulty_input, tmp_path / "local")
    assert result.returncode == 0, result.stderr
    return read_output(tmp_path / "local")


def test_ray_cluster_by_address(faulty_input, tmp_path, reference):
    port = free_port()
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    # Ray clusters use token authentication: every node and the driver share the token
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    processes = [start([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--include-dashboard", "false", *common], tmp_path / "head.log", env)]
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(), "ray head")
        processes.append(start([str(BIN / "ray"), "start", "--address", address, "--node-ip-address", "127.0.0.1",
                                *common], tmp_path / "worker.log", env))
        wait_for(lambda: "Ray runtime started" in (tmp_path / "worker.log").read_text(), "ray worker")
        result = curate_run(["--engine", "ray", "--address", address], faulty_input, tmp_path / "ray", env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert read_output(tmp_path / "ray") == reference
    finally:
        stop(processes)


def test_spark_standalone_cluster_by_master_url(faulty_input, tmp_path, reference):
    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    port = free_port()
    master = f"spark://127.0.0.1:{port}"
    env = {"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_HOME": str(Path(pyspark.__file__).parent)}
    processes = [start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                        "--port", str(port), "--webui-port", str(free_port())], tmp_path / "master.log", env)]
    try:
        wait_for(lambda: "I have been elected leader" in (tmp_path / "master.log").read_text(), "spark master")
        processes.append(start([spark_class, "org.apache.spark.deploy.worker.Worker", "--cores", "2", "--memory", "2g",
                                "--webui-port", str(free_port()), master], tmp_path / "worker.log", env))
        wait_for(lambda: "Successfully registered with master" in (tmp_path / "worker.log").read_text(), "spark worker")
        result = curate_run(["--engine", "spark", "--master", master], faulty_input, tmp_path / "spark")
        assert result.returncode == 0, result.stderr[-3000:]
        assert read_output(tmp_path / "spark") == reference
    finally:
        stop(processes)


HELD_SESSION = """
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
from curate.engines import make_engine
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline

name, folder = sys.argv[1], sys.argv[2]
pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(60)], "url": [f"http://x/{i % 40}" for i in range(60)],
                         "text": [f"caption {i % 40}" for i in range(60)]}), f"{folder}/in.parquet", row_group_size=20)
pipeline = parse_pipeline({"name": "held", "stages": [{"stage": "exact_dedup", "key": "url_text"}]}, "<held>")
engine = make_engine(name, 2, progress=False)
with engine.session():
    kept = [run_pipeline(pipeline, engine, f"{folder}/in.parquet", f"{folder}/out-{run}")["kept"] for run in (1, 2)]
print(json.dumps(kept))
"""


@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_a_session_held_around_two_runs_serves_both_and_ends(engine, tmp_path):
    """As a notebook or bench/scale.py holds one: each run joins the engine's session, which ends with
    the block (a run used to drop Spark's session object, so the block's end failed)."""
    result = subprocess.run([sys.executable, "-c", HELD_SESSION, engine, str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[40, 40]"
