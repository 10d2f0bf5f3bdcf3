"""Benchmark: the same pipeline and data on the local, Ray and Spark engines, in one run.

Prints samples/s for each engine and its time as a ratio to the local engine's (target:
Ray and Spark within 1.5x of local at about 20k samples), twice: cold, where the clock
also covers starting a local Ray or Spark and their first workers, and warm, a second run
in the same session (as on a cluster that is already up and has run before).

Usage: .venv/bin/python bench/engines.py [--copies 3] [--workers N] [--pipeline pipelines/laion_filter.yaml]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from curate.engines import LocalEngine, RayEngine, SparkEngine
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline

from common import ROOT, copy_pool


def timed_run(pipeline, engine, source: Path, out: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    stats = run_pipeline(pipeline, engine, [str(source)], out)
    return time.perf_counter() - start, stats


@contextmanager
def session(engine: str, workers: int):
    """Start the engine's session (a local Ray, a Spark context) for two runs; the local engine needs none."""
    if engine == "ray":
        import ray

        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()
    elif engine == "spark":
        from pyspark.sql import SparkSession

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = SparkSession.builder.master(f"local[{workers}]").config("spark.ui.enabled", "false").getOrCreate()
        yield
        spark.stop()
    else:
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=ROOT / "data" / "openclipart" / "pool")
    parser.add_argument("--copies", type=int, default=3, help="copies of the pool (3 = 21,723 samples)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "laion_filter.yaml")
    args = parser.parse_args()
    pipeline = load_pipeline(args.pipeline)
    engines = {
        "local": lambda: LocalEngine(args.workers, progress=False),
        "ray": lambda: RayEngine(args.workers, progress=False),
        "spark": lambda: SparkEngine(args.workers, progress=False),
    }
    cold, warm = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        source = copy_pool(args.pool, args.copies, scratch / "pool") if args.copies > 1 else args.pool
        for name, make in engines.items():
            start = time.perf_counter()
            with session(name, args.workers):
                _, stats = timed_run(pipeline, make(), source, scratch / f"{name}-1")
                cold[name] = (time.perf_counter() - start, stats)
                warm[name] = timed_run(pipeline, make(), source, scratch / f"{name}-2")
    n = cold["local"][1]["input"]
    kept = {name: stats["kept"] for name, (_, stats) in cold.items()}
    print(f"\n{pipeline.name} on {n} samples, {args.workers} workers; kept per engine: {kept}")
    for label, runs in (("warm (second run)", warm), ("cold (with start-up)", cold)):
        base = runs["local"][0]
        line = "  ".join(f"{name} {n / seconds:7.1f} samples/s ({seconds / base:4.2f}x local)"
                         for name, (seconds, _) in runs.items())
        print(f"{label:22} {line}")
    print("target: ray and spark within 1.5x of local")


if __name__ == "__main__":
    main()
