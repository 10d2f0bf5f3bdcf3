"""Benchmark: CLIP training throughput and memory of this trainer against open_clip's own training
script (`open_clip_train.main`, shipped in the open_clip_torch wheel, `--dataset-type webdataset`),
on the same model, shards, batch size and device, with 1 and 2 processes.

Shard sets: `pool`, the WebDataset shards a curation of the pool wrote (`--data`, curated with
pipelines/quickstart.yaml when missing), and `100k` / `1m`, a synthetic set of 1M small samples
(the pool's images fitted to 64 px in their 8 flips and rotations, as JPEGs, each with its
drawing's real caption; 100 shards of 10,000 with sizes.json, made once with PIL and NumPy and
cached under data/synthetic_clip/): `100k` trains on its first 10 shards, `1m` on all 100.

Each run trains a samples budget (`--samples`), so a run's length does not grow with its set.
Per run: steady-state samples/s over the steps after `--skip` warm-up steps (from each trainer's
own per-step log); the wall time and CPU seconds of the whole run (every process, start-up
included: the machine's cores may be shared, so CPU seconds per sample compare the trainers
where wall time cannot); peak RSS (VmHWM) per rank, of the rank's process and of its loader
workers, polled from /proc. Data loading runs in `--workers` loader processes per rank in
both. open_clip_train runs with `--precision fp32` (its default amp is slow on a CPU). Targets:
curate >= 1.0x open_clip's samples/s; each rank's peak RSS on `1m` <= 1.1x its figure on `100k`.

Usage: .venv/bin/python bench/train_clip.py [--sets pool,100k,1m] [--samples 1280] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from curate.io.shards import shard_name, write_sizes
from curate.io.writers import TarShard

from common import ROOT

MODEL_DIR = ROOT / "curate" / "models" / "configs"  # curate.models.clip.MODEL_CONFIGS, without importing torch
SYNTHETIC = ROOT / "data" / "synthetic_clip"
SYNTHETIC_SAMPLES, PER_SHARD, IMAGE_SIDE = 1_000_000, 10_000, 64
SETS = {"100k": 100_000, "1m": SYNTHETIC_SAMPLES}
# open_clip's arguments travel in an environment variable: torchrun would take `--logs` for its own
# open_clip_train (3.3) wraps the model in DDP with device_ids=[device] even on a CPU, which torch
# refuses there ("device_ids ... only work with ... GPU modules"): the launcher drops device_ids for
# a CPU model, as DDP expects on a CPU, and changes nothing else.
OPEN_CLIP_LAUNCHER = f"""
import json, os
import torch
import open_clip
open_clip.add_model_config({str(MODEL_DIR)!r})  # the project's tiny configs, as this trainer sees them
DDP = torch.nn.parallel.DistributedDataParallel
class CpuDDP(DDP):
    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        super().__init__(module, device_ids=None if on_cpu else device_ids, **kwargs)
torch.nn.parallel.DistributedDataParallel = CpuDDP
from open_clip_train.main import main
main(json.loads(os.environ["OPEN_CLIP_ARGS"]))
"""
_TICK = os.sysconf("SC_CLK_TCK")


def thumbnails(pool: Path) -> tuple[list[bytes], list[str]]:
    """Every pool image with a caption, fitted to IMAGE_SIDE px in its 8 flips and rotations, as
    JPEGs, and the caption of each."""
    images, captions = [], []
    transposes = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
                  Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
                  Image.Transpose.TRANSVERSE]
    for path in sorted(pool.glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(columns=["image", "text"], batch_size=256):
            for data, text in zip(batch.column("image").to_pylist(), batch.column("text").to_pylist()):
                if not data or not (text or "").strip():
                    continue
                with Image.open(io.BytesIO(data)) as im:
                    im.draft("RGB", (2 * IMAGE_SIDE, 2 * IMAGE_SIDE))
                    small = ImageOps.fit(im.convert("RGB"), (IMAGE_SIDE, IMAGE_SIDE))
                for transpose in transposes:
                    out = io.BytesIO()
                    (small if transpose is None else small.transpose(transpose)).save(out, "JPEG", quality=90)
                    images.append(out.getvalue())
                    captions.append(text.strip())
    return images, captions


def synthetic_shards(pool: Path) -> Path:
    """The cached 1M-sample shard set (made on first use): a folder of part-NNNNN.tar and sizes.json."""
    folder = SYNTHETIC / "shards"
    stamp = SYNTHETIC / "made.json"
    wanted = {"samples": SYNTHETIC_SAMPLES, "per_shard": PER_SHARD, "image_side": IMAGE_SIDE}
    if stamp.exists() and json.loads(stamp.read_text()).get("settings") == wanted:
        return folder
    started = time.perf_counter()
    images, captions = thumbnails(pool)
    order = np.random.default_rng(0).permutation(len(images))  # neighbours in a shard are different drawings
    work = SYNTHETIC / "shards.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sizes = {}
    for shard in range(SYNTHETIC_SAMPLES // PER_SHARD):
        picks = order[np.arange(shard * PER_SHARD, (shard + 1) * PER_SHARD) % len(images)].tolist()
        names, payloads = [], []
        for number, pick in zip(range(shard * PER_SHARD, (shard + 1) * PER_SHARD), picks):
            names += (f"{number:09d}.jpg", f"{number:09d}.txt")
            payloads += (images[pick], captions[pick].encode())
        tar = TarShard(work / shard_name(shard))
        tar.add(names, payloads)
        tar.close()
        sizes[shard_name(shard)] = PER_SHARD
    write_sizes(work, sizes)
    shutil.rmtree(folder, ignore_errors=True)
    work.rename(folder)
    made = {"settings": wanted, "distinct_images": len(images), "seconds": round(time.perf_counter() - started, 1),
            "bytes": sum(p.stat().st_size for p in folder.glob("*.tar"))}
    stamp.write_text(json.dumps(made, indent=2) + "\n")
    print(f"made {SYNTHETIC_SAMPLES:,} samples ({len(images):,} distinct 64 px images, "
          f"{made['bytes'] / 2**30:.2f} GiB) in {made['seconds']} s: {folder}", flush=True)
    return folder


def shard_pattern(folder: Path, count: int) -> str:
    """The first `count` shards of `folder` as a brace range."""
    return str(folder / f"part-{{00000..{count - 1:05d}}}.tar")


@dataclass
class Usage:
    """What a run cost: wall and CPU seconds, and each rank's peak RSS (MiB) and its workers' largest."""

    wall_s: float
    cpu_s: float
    rank_rss: list[float]
    worker_rss: list[float]


def _proc_table() -> dict[int, int]:
    """pid -> parent pid of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    table[int(entry)] = int(handle.read().rpartition(")")[2].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
    return table


def _peak_rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_measured(command: list[str], nproc: int, cwd: Path, env: dict, log: Path) -> tuple[int, Usage]:
    """Run `command` (output to `log`), polling its process tree: the ranks are the root (1
    process) or the launcher's children, every descendant of a rank is a loader worker."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        parents: dict[int, int] = {}
        peaks: dict[int, float] = {}
        while process.poll() is None:
            children: dict[int, list[int]] = {}
            for pid, parent in _proc_table().items():
                children.setdefault(parent, []).append(pid)
            todo = [process.pid]
            while todo:  # the root and its descendants
                pid = todo.pop()
                for child in children.get(pid, []):
                    parents[child] = pid
                    todo.append(child)
                if (peak := _peak_rss_mib(pid)) is not None:
                    peaks[pid] = peak
            time.sleep(0.1)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ranks = [process.pid] if nproc == 1 else [p for p, parent in parents.items() if parent == process.pid]

    def rank_of(pid: int) -> int | None:
        while pid in parents and pid not in ranks:
            pid = parents[pid]
        return pid if pid in ranks else None

    workers = {rank: [peaks.get(p, 0.0) for p in parents if p != rank and rank_of(p) == rank] for rank in ranks}
    return process.returncode, Usage(wall, cpu, [peaks.get(r, 0.0) for r in ranks],
                                     [max(w, default=0.0) for w in workers.values()])


def launch(nproc: int, module_or_script: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, *module_or_script]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *module_or_script]


def _failure(log: Path, code: int) -> str:
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if "Error" in line or "error" in line]
    return "failed: " + (errors[-1][:200] if errors else f"exit code {code}")


def ours(data: str, samples: int, batch: int, workers: int, skip: int, nproc: int,
         scratch: Path) -> tuple[float, Usage] | str:
    run = scratch / f"ours-{nproc}-{time.monotonic_ns()}"
    overrides = [f"batch_size={batch}", f"workers={workers}", "warmup_steps=5", f"checkpoint_every={samples}"]
    command = launch(nproc, ["-m", "train.clip.train", str(ROOT / "train" / "configs" / "clip_tiny.yaml"),
                             "--data", data, "--output", str(run), "--samples-seen", str(samples)]
                     + [a for o in overrides for a in ("--set", o)])
    code, usage = run_measured(command, nproc, ROOT, dict(os.environ), scratch / "ours.log")
    if code != 0:
        return _failure(scratch / "ours.log", code)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    first, last = log[skip - 1], log[-1]
    return (last["samples_seen"] - first["samples_seen"]) / (last["elapsed_s"] - first["elapsed_s"]), usage


def open_clip(data: str, samples: int, batch: int, workers: int, skip: int, nproc: int,
              scratch: Path) -> tuple[float, Usage] | str:
    launcher = scratch / "open_clip_launcher.py"
    launcher.write_text(OPEN_CLIP_LAUNCHER)
    args = ["--train-data", data, "--dataset-type", "webdataset", "--train-num-samples", str(samples),
            "--batch-size", str(batch // nproc), "--model", "clip-tiny", "--precision", "fp32",
            "--workers", str(workers), "--epochs", "1", "--lr", "5e-4", "--wd", "0.1", "--warmup", "5",
            "--log-every-n-steps", "1", "--logs", str(scratch / "open_clip_logs"),
            "--name", f"n{nproc}-{time.monotonic_ns()}",
            "--save-frequency", "0", "--report-to", "", "--seed", "0", "--device", "cpu"]
    log = scratch / "open_clip.log"
    code, usage = run_measured(launch(nproc, [str(launcher)]), nproc, scratch,
                               {**os.environ, "OPEN_CLIP_ARGS": json.dumps(args)}, log)
    rates = [float(m) for m in re.findall(r"([\d.]+)/s, [\d.]+/s/gpu", log.read_text(errors="replace"))]
    if code != 0 or len(rates) <= skip:
        return _failure(log, code)
    # per-step rates at equal batch sizes: their harmonic mean is samples / time over those steps
    return statistics.harmonic_mean(rates[skip:]), usage


def pool_shards(data: Path) -> str:
    """The shards of curated folder `data` as a brace range (curated from the pool with
    quickstart.yaml when missing)."""
    if not list((data / "shards").glob("*.tar")):
        from curate.engines.local import LocalEngine
        from curate.pipeline import load_pipeline
        from curate.runner import run_pipeline

        print(f"curating the pool into {data} (pipelines/quickstart.yaml)", flush=True)
        run_pipeline(load_pipeline(ROOT / "pipelines" / "quickstart.yaml"), LocalEngine(progress=False), None, data)
    count = len(list((data / "shards").glob("part-*.tar")))
    pattern = shard_pattern(data / "shards", count)
    if not all((data / "shards" / shard_name(i)).exists() for i in range(count)):
        raise SystemExit(f"{data}/shards: expected part-00000.tar to part-{count - 1:05d}.tar, "
                         "as curate run writes them")
    return pattern


def _row(name: str, result: tuple[float, Usage] | str, samples: int) -> str:
    if isinstance(result, str):
        return f"    {name:<15} {result}"
    rate, usage = result
    return (f"    {name:<15} {rate:7.1f} samples/s  wall {usage.wall_s:6.1f} s  CPU {usage.cpu_s:6.1f} s "
            f"({1000 * usage.cpu_s / samples:5.1f} CPU-s per 1k samples)  peak RSS per rank "
            f"{'/'.join(f'{r:.0f}' for r in usage.rank_rss)} MiB, its loader worker "
            f"{'/'.join(f'{w:.0f}' for w in usage.worker_rss)} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="pool,100k,1m", help="comma-separated: pool, 100k, 1m")
    parser.add_argument("--data", type=Path, default=ROOT / "out" / "quickstart", help="the curated folder of `pool`")
    parser.add_argument("--pool", type=Path, default=ROOT / "data" / "openclipart" / "pool",
                        help="where the synthetic set's images and captions come from")
    parser.add_argument("--samples", type=int, default=1280, help="samples each run trains on")
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of samples/s")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="data loader processes per rank, both trainers")
    parser.add_argument("--nproc", default="1,2", help="process counts to run")
    args = parser.parse_args()
    sets = args.sets.split(",")
    unknown = set(sets) - {"pool", *SETS}
    if unknown:
        raise SystemExit(f"--sets: unknown {sorted(unknown)}; choose from pool, {', '.join(SETS)}")
    synthetic = synthetic_shards(args.pool) if set(sets) & set(SETS) else None
    data = {name: pool_shards(args.data) if name == "pool" else shard_pattern(synthetic, SETS[name] // PER_SHARD)
            for name in sets}
    results: dict[tuple[str, int, str], tuple[float, Usage] | str] = {}
    print(f"clip-tiny, CPU fp32, batch {args.batch_size}, {args.samples:,} samples a run, {args.workers} loader "
          f"worker(s) a rank, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sets:
            for nproc in map(int, args.nproc.split(",")):
                run_args = (data[name], args.samples, args.batch_size, args.workers, args.skip, nproc, Path(tmp))
                mine, theirs = results[name, nproc, "curate"], results[name, nproc, "open_clip"] = \
                    ours(*run_args), open_clip(*run_args)
                print(f"{name}, {nproc} process(es):", flush=True)
                print(_row("curate", mine, args.samples), flush=True)
                print(_row("open_clip_train", theirs, args.samples), flush=True)
                if not isinstance(mine, str) and not isinstance(theirs, str):
                    print(f"    ratio curate / open_clip: samples/s {mine[0] / theirs[0]:.2f}x (target >= 1.0), "
                          f"CPU per sample {theirs[1].cpu_s / mine[1].cpu_s:.2f}x less", flush=True)
    if "100k" in sets and "1m" in sets:
        for nproc in map(int, args.nproc.split(",")):
            for trainer in ("curate", "open_clip"):
                small, big = results["100k", nproc, trainer], results["1m", nproc, trainer]
                if isinstance(small, str) or isinstance(big, str):
                    continue
                rank = max(big[1].rank_rss) / max(small[1].rank_rss)
                worker = max(big[1].worker_rss) / max(max(small[1].worker_rss), 1e-9)
                print(f"peak RSS 1m / 100k, {trainer}, {nproc} process(es): rank {rank:.2f}x, loader worker "
                      f"{worker:.2f}x (target <= 1.1)", flush=True)


if __name__ == "__main__":
    main()
