"""Benchmark: LLaVA training throughput (tokens/s) of this trainer against the limit, a plain
Hugging Face training step of the same LM on the same inputs, in one run.

Ours: `train.llava.train` in stage 2 (projector and LM) on the pool's conversations, the
whole step: data loading, the frozen tower, the projector, the LM, DDP-ready loss, the loop.
The limit: the same LM (a copy of the trained run's), fed the very batches' inputs_embeds
(computed beforehand, outside the clock), labels and masks, `loss.backward()` and
`torch.optim.AdamW.step()`, nothing else. Both count the non-padding tokens of each step and
time the steps after `--skip` warm-up steps; each sees its batches' shapes for the first time
(a new shape costs a warm-up on a GPU, hence `--pad-to-multiple`). Target: at least 0.9x.

Usage: .venv/bin/python bench/train_llava.py [--data data/openclipart/conversations] [--steps 30]
       [--batch-size 16] [--lm-config llava-lm-tiny] [--precision fp32|bf16] [--workers 1]
       [--pad-to-multiple 64] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT

sys.path.insert(0, str(ROOT))

from curate.models.llava.model import load_checkpoint
from train.data import StreamSettings
from train.llava.config import load_llava_config
from train.llava.data import llava_loader, llava_source

CONFIG = ROOT / "train" / "configs" / "llava_tiny.yaml"


def ours(args, run: Path) -> tuple[float, list[str]]:
    """Steady-state tokens/s of the trainer, from its own per-step log; and its overrides."""
    overrides = ["stage=2", f"data={args.data}", f"batch_size={args.batch_size}", f"workers={args.workers}",
                 f"samples_seen={args.steps * args.batch_size}", f"checkpoint_every={args.steps}",
                 f"precision={args.precision}", f"model.lm_config={args.lm_config}", "warmup_steps=5",
                 f"model.pad_to_multiple={args.pad_to_multiple}"]
    command = [sys.executable, "-m", "train.llava.train", str(CONFIG), "--output", str(run)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    result = subprocess.run(command + [a for o in overrides for a in ("--set", o)], capture_output=True, text=True,
                            cwd=ROOT, env=env)
    if result.returncode != 0:
        sys.exit("trainer failed:\n" + result.stderr[-3000:])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    first, last = log[args.skip - 1], log[-1]
    tokens = sum(r["tokens"] for r in log[args.skip:])
    return tokens / (last["elapsed_s"] - first["elapsed_s"]), overrides


def run_batches(run: Path, overrides: list[str], steps: int, device: torch.device):
    """The run's model and its first `steps` batches, collated and on the device."""
    config = load_llava_config(CONFIG, overrides)
    model, _ = load_checkpoint(run / "last.pt", device)
    settings = StreamSettings.from_config(config.model_copy(update={"workers": 0}))
    batches = llava_loader(llava_source(config.stage, config.data), model.input_format(), config.caption_prompt,
                           settings, 0, 1).from_step(0)
    return config, model, [{k: v.to(device) for k, v in next(batches).items()} for _ in range(steps)]


def limit(args, run: Path, overrides: list[str]) -> float:
    """Steady-state tokens/s of plain HF steps on the run's batches."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, model, batches = run_batches(run, overrides, args.steps, device)
    with torch.no_grad():
        inputs = [{"inputs_embeds": model.embed(b["input_ids"], b["pixel_values"]),
                   **{k: b[k] for k in ("attention_mask", "position_ids", "labels")}} for b in batches]
    lm = copy.deepcopy(model.lm).train().requires_grad_(True)
    del model, batches
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    tokens, started = 0, 0.0
    for step, batch in enumerate(inputs):
        if step == args.skip:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = lm(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        if step >= args.skip:
            tokens += int(batch["attention_mask"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "openclipart" / "conversations"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lm-config", default="llava-lm-tiny", help="a config in curate/models/configs or a JSON file")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--workers", type=int, default=1, help="trainer's loader processes")
    parser.add_argument("--pad-to-multiple", type=int, default=1, help="batch lengths rounded up to this")
    parser.add_argument("--threads", type=int, help="torch CPU threads in both (a shared, busy CPU: 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        ours_rate, overrides = ours(args, run)
        limit_rate = limit(args, run, overrides)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"LLaVA stage 2, LM {args.lm_config}, batch {args.batch_size}, {args.precision}, {device}, "
          f"steps {args.skip + 1}-{args.steps}, lengths padded to a multiple of {args.pad_to_multiple}")
    print(f"{'trainer':<28} {'tokens/s':>10}")
    print(f"{'curate (train.llava.train)':<28} {ours_rate:>10.0f}")
    print(f"{'plain HF step (limit)':<28} {limit_rate:>10.0f}")
    print(f"ratio: {ours_rate / limit_rate:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
