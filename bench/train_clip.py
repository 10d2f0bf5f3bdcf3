"""Benchmark: CLIP training throughput of this trainer against open_clip's own training script
(`open_clip_train.main`, shipped in the open_clip_torch wheel), on the same model, data (the
WebDataset shards `curate run` wrote), batch size and device, with 1 and 2 processes.

Both figures are steady-state samples/s over the steps after `--skip` warm-up steps, taken
from each trainer's own per-step log; data loading runs in one loader process per rank in
both (`--workers`). open_clip_train runs with `--precision fp32` (its default amp is slow
on a CPU). Target: at least 0.95x open_clip.

Usage: .venv/bin/python bench/train_clip.py [--data out/quickstart] [--steps 40] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT

MODEL_DIR = ROOT / "train" / "configs" / "models"
# open_clip's arguments travel in an environment variable: torchrun would take `--logs` for its own
OPEN_CLIP_LAUNCHER = f"""
import json, os
import open_clip
open_clip.add_model_config({str(MODEL_DIR)!r})  # the project's tiny configs, as this trainer sees them
from open_clip_train.main import main
main(json.loads(os.environ["OPEN_CLIP_ARGS"]))
"""


def launch(nproc: int, module_or_script: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, *module_or_script]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *module_or_script]


def ours(data: Path, steps: int, batch: int, workers: int, skip: int, nproc: int, scratch: Path) -> float | str:
    run = scratch / f"ours-{nproc}"
    overrides = [f"batch_size={batch}", f"workers={workers}", "warmup_steps=5", f"checkpoint_every={steps}"]
    command = launch(nproc, ["-m", "train.clip.train", str(ROOT / "train" / "configs" / "clip_tiny.yaml"),
                             "--data", str(data), "--output", str(run), "--samples-seen", str(steps * batch)]
                     + [a for o in overrides for a in ("--set", o)])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        return "failed: " + result.stderr.strip().splitlines()[-1][:200]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    first, last = log[skip - 1], log[-1]
    return (last["samples_seen"] - first["samples_seen"]) / (last["elapsed_s"] - first["elapsed_s"])


def open_clip(data: Path, steps: int, batch: int, workers: int, skip: int, nproc: int, scratch: Path) -> float | str:
    launcher = scratch / "open_clip_launcher.py"
    launcher.write_text(OPEN_CLIP_LAUNCHER)
    shards = "::".join(str(p) for p in sorted((data / "shards").glob("*.tar")))
    args = ["--train-data", shards, "--dataset-type", "webdataset", "--train-num-samples", str(steps * batch),
            "--batch-size", str(batch // nproc), "--model", "clip-tiny", "--precision", "fp32",
            "--workers", str(workers), "--epochs", "1", "--lr", "5e-4", "--wd", "0.1", "--warmup", "5",
            "--log-every-n-steps", "1", "--logs", str(scratch / "open_clip_logs"), "--name", f"n{nproc}",
            "--save-frequency", "0", "--report-to", "", "--seed", "0", "--device", "cpu"]
    result = subprocess.run(launch(nproc, [str(launcher)]), capture_output=True, text=True, cwd=scratch,
                            env={**os.environ, "OPEN_CLIP_ARGS": json.dumps(args)})
    rates = [float(m) for m in re.findall(r"([\d.]+)/s, [\d.]+/s/gpu", result.stdout + result.stderr)]
    if result.returncode != 0 or len(rates) <= skip:
        errors = [l for l in (result.stderr + result.stdout).splitlines() if "Error" in l or "error" in l]
        return "failed: " + (errors[-1][:200] if errors else f"exit code {result.returncode}")
    # per-step rates at equal batch sizes: their harmonic mean is samples / time over those steps
    return statistics.harmonic_mean(rates[skip:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "out" / "quickstart", help="a curate run's output folder")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the figure")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="data loader processes per rank, both trainers")
    args = parser.parse_args()
    if not list((args.data / "shards").glob("*.tar")):
        raise SystemExit(f"{args.data}/shards has no WebDataset shards: run `make demo` (or curate run) first")
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            mine = ours(args.data, args.steps, args.batch_size, args.workers, args.skip, nproc, Path(tmp))
            theirs = open_clip(args.data, args.steps, args.batch_size, args.workers, args.skip, nproc, Path(tmp))
            ratio = f"{mine / theirs:.2f}x (target >= 0.95)" if isinstance(mine, float) and isinstance(theirs, float) else "n/a"
            show = lambda v: f"{v:7.1f} samples/s" if isinstance(v, float) else v  # noqa: E731
            print(f"{nproc} process(es), batch {args.batch_size}, clip-tiny, CPU fp32: curate {show(mine)}  "
                  f"open_clip_train {show(theirs)}  ratio {ratio}")


if __name__ == "__main__":
    main()
