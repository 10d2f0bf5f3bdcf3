"""Benchmark: captions/s of the recaption stage against the limit, the same captioner's
`generate` called in a plain loop with the same batch size on images decoded beforehand.

The stage adds what a pipeline needs around the model: decoding each row's bytes, a seed per
uid, the result cache and Arrow columns. Target: at least 0.9x the plain loop. Runs on the GPU
when torch sees one (the figure to quote there), else on the CPU.

Usage: .venv/bin/python bench/capfilt.py [--checkpoint runs/captioner/last.pt] [--images 64]
       [--num-captions 5] [--batch-size 16] [--repeats 3]
Without --checkpoint a tiny LLaVA (random weights, the llava_tiny architecture) is built.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from common import ROOT


def tiny_captioner(captions: list[str], out: Path) -> Path:
    """A LLaVA checkpoint with llava_tiny's architecture and random weights."""
    import torch

    from curate.models.llava.model import save_checkpoint
    from train.llava.build import build_llava, build_tiny_lm
    from train.llava.config import load_llava_config

    torch.manual_seed(0)
    model = load_llava_config(ROOT / "train" / "configs" / "llava_tiny.yaml").model
    lm = build_tiny_lm(model.lm_config, captions, model.vocab_size, model.max_grid, out / "lm")
    save_checkpoint(out / "last.pt", build_llava(model, lm))
    return out / "last.pt"


def best_of(repeats: int, fn) -> float:
    """The shortest of `repeats` timed calls (this machine's timings vary run to run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default=str(ROOT / "data" / "openclipart" / "pool"))
    parser.add_argument("--checkpoint")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--num-captions", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from curate.models.llava.generate import Captioner
    from curate.stages.recaption import Recaption, RecaptionConfig, sample_seed

    table = pq.read_table(sorted(Path(args.pool).glob("*.parquet"))[0]).slice(0, args.images)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or tiny_captioner(table.column("text").to_pylist(), Path(tmp))
        config = RecaptionConfig(checkpoint=str(checkpoint), num_captions=args.num_captions,
                                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        stage = Recaption(config)
        stage.setup()
        captioner: Captioner = stage._captioner
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in table.column("image").to_pylist()]
        seeds = [sample_seed(uid, config.seed) for uid in table.column("uid").to_pylist()]

        def plain_loop():
            for start in range(0, len(images), args.batch_size):
                captioner.generate(images[start:start + args.batch_size], num_return=args.num_captions,
                                   strategy="nucleus", top_p=config.top_p, max_new_tokens=args.max_new_tokens,
                                   seeds=seeds[start:start + args.batch_size], batch_size=args.batch_size)

        stage.process(table.slice(0, args.batch_size))  # warm-up: first calls allocate
        limit = best_of(args.repeats, plain_loop)
        ours = best_of(args.repeats, lambda: stage.process(table))
    captions = len(images) * args.num_captions
    print(f"device {captioner.device}, {len(images)} images x {args.num_captions} captions, batch {args.batch_size}, "
          f"{args.max_new_tokens} new tokens, best of {args.repeats}")
    print(f"recaption stage: {captions / ours:,.1f} captions/s")
    print(f"plain generate loop (limit): {captions / limit:,.1f} captions/s")
    print(f"ratio stage / limit: {limit / ours:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
