"""Benchmark: embedding near-duplicate search and embedding throughput.

Part 1 (dedup): `--n` random 512-d unit vectors with `--pairs` planted near-duplicates (a copy
plus Gaussian noise, cosine ~0.96), searched for pairs at cosine >= 0.9 with the approximate
index `embed_dedup` uses above its flat limit (IVF, `curate.neighbours`) and with exact brute
force (FAISS flat inner product), in one run: time, recall of the planted pairs, peak memory.
On a CPU, exact search over all 1M queries takes hours, so unless `--flat-queries 0` it runs
on a random sample of queries and its time is scaled to all queries (flat search time is
linear in the number of queries); the scaled figure is labelled as such.
Target: recall >= 0.95 at >= 10x less time than flat.

Part 2 (`--embed`): images/s of the `embed` stage on real pool images, with clip-tiny and
ViT-B-32 (random weights), against clip-retrieval's `clip_inference` on the same model, weights
and images (its own venv, bench/.venv-cr: `make bench-cr`), both on this machine's CPUs.

Part 3 (`--calibrate CHECKPOINT`): how well a scorer serves `embed_dedup` on real pool
drawings: near copies (curate.sample.near_copies: re-encoded, resized, cropped, shifted) of
`--copies` drawings of at least 256 px, and for each threshold the share of copies at or above
it to their original (recall, per kind) and the share of distinct drawings that have another
distinct drawing at or above it (those a dedup at that threshold would merge).

Usage: .venv/bin/python bench/dedup.py [--n 1000000] [--pairs 10000] [--nprobe 16]
       .venv/bin/python bench/dedup.py --embed [--images 1000] [--skip-dedup]
       .venv/bin/python bench/dedup.py --skip-dedup --calibrate runs/.../last.pt [--images 1000] [--copies 200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT

sys.path.insert(0, str(ROOT))

from curate.neighbours import SearchConfig, build_index, search, similar_pairs

CR_PYTHON = ROOT / "bench" / ".venv-cr" / "bin" / "python"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def planted_vectors(n: int, pairs: int, dim: int, noise: float, seed: int = 0) -> np.ndarray:
    """Rows n - pairs + i are noisy copies of rows i."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[n - pairs :] = vectors[:pairs] + noise * rng.standard_normal((pairs, dim), dtype=np.float32)
    vectors[n - pairs :] /= np.linalg.norm(vectors[n - pairs :], axis=1, keepdims=True)
    return vectors


def recall(left: np.ndarray, right: np.ndarray, n: int, pairs: int, queries: np.ndarray | None = None) -> float:
    found = set(zip(left.tolist(), right.tolist()))
    planted = [(i, n - pairs + i) for i in range(pairs)]
    if queries is not None:
        asked = set(queries.tolist())
        planted = [p for p in planted if p[0] in asked or p[1] in asked]
    return sum(p in found for p in planted) / max(1, len(planted))


def bench_dedup(args) -> None:
    started = time.perf_counter()
    vectors = planted_vectors(args.n, args.pairs, 512, args.noise)
    cosines = np.einsum("ij,ij->i", vectors[: args.pairs], vectors[args.n - args.pairs :])
    print(f"{args.n:,} vectors, {args.pairs:,} planted pairs (cosine {cosines.min():.3f}..{cosines.max():.3f}), "
          f"threshold {args.threshold}; made in {time.perf_counter() - started:.1f} s")

    config = SearchConfig(index=args.index, nprobe=args.nprobe, nlist=args.nlist, neighbours=args.neighbours)
    started = time.perf_counter()
    left, right = similar_pairs(vectors, args.threshold, config)
    approx_s = time.perf_counter() - started
    approx_recall = recall(left, right, args.n, args.pairs)
    print(f"{args.index:>5}: {approx_s:8.1f} s  recall of planted pairs {approx_recall:.4f}  "
          f"({len(left):,} pairs found)  peak RSS {peak_rss_gib():.2f} GiB")

    started = time.perf_counter()
    flat = build_index(vectors, SearchConfig(index="flat"))
    if args.flat_queries and args.flat_queries < args.n:
        queries = np.random.default_rng(1).choice(args.n, args.flat_queries, replace=False)
        rows, found, _ = search(flat, vectors[queries], args.neighbours + 1, args.threshold)
        flat_s = (time.perf_counter() - started) * args.n / args.flat_queries
        rows = queries[rows]
        label = f"(scaled from {args.flat_queries:,} queries)"
    else:
        queries = None
        rows, found, _ = search(flat, vectors, args.neighbours + 1, args.threshold)
        flat_s, label = time.perf_counter() - started, "(all queries)"
    keep = rows != found
    pairs = np.unique(np.sort(np.stack([rows[keep], found[keep]], axis=1), axis=1), axis=0)
    flat_recall = recall(pairs[:, 0], pairs[:, 1], args.n, args.pairs, queries)
    # the approximate index on the same queries: what exact search finds there, it should too
    approx = set(zip(left.tolist(), right.tolist()))
    agreement = sum((a, b) in approx for a, b in pairs.tolist()) / max(1, len(pairs))
    print(f" flat: {flat_s:8.1f} s {label}  recall of planted pairs {flat_recall:.4f}  "
          f"peak RSS {peak_rss_gib():.2f} GiB")
    print(f"{args.index} finds {agreement:.4f} of the pairs exact search finds (same queries)")
    print(f"ratio: {args.index} is {flat_s / approx_s:.1f}x faster than flat (target >= 10x), "
          f"recall {approx_recall:.4f} (target >= 0.95)")


# clip-retrieval's inference, run in its own venv: the project's model configs registered the way
# the trainer benchmark does for open_clip, then clip_inference on a WebDataset tar of the images
# and captions (its `files` reader, in 2.45, pairs no image with its caption: keys keep extensions)
CR_LAUNCHER = """
import json, sys, time
import open_clip
open_clip.add_model_config({models!r})
from clip_retrieval.clip_inference.main import main

if __name__ == "__main__":
    started = time.perf_counter()
    main(**json.loads(sys.argv[1]))
    print("CR_SECONDS", time.perf_counter() - started)
"""


def bench_embed(args) -> None:
    import pyarrow.parquet as pq
    import torch

    from curate.models.clip import create_clip
    from curate.stages.embed import Embed, EmbedConfig

    pool = pq.read_table(ROOT / "data" / "openclipart" / "pool", columns=["uid", "text", "image"])
    pool = pool.slice(0, args.images)
    torch.set_num_threads(os.cpu_count())
    print(f"\nembedding {pool.num_rows} pool images on {os.cpu_count()} CPU(s), batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = os.cpu_count()  # one per clip-retrieval loader process (each reads whole shards)
        rows = pool.to_pylist()
        for k in range(shards):
            with tarfile.open(tmp / f"images-{k}.tar", "w") as tar:
                for i in range(k, len(rows), shards):
                    caption = (rows[i]["text"] or "").encode()
                    for name, data in ((f"{i:06d}.jpg", rows[i]["image"]), (f"{i:06d}.txt", caption)):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        launcher = tmp / "clip_retrieval_inference.py"
        launcher.write_text(CR_LAUNCHER.format(models=str(ROOT / "train" / "configs" / "models")))
        for model in args.models:
            torch.manual_seed(0)
            weights = tmp / f"{model}.pt"
            torch.save(create_clip(model).model.state_dict(), weights)  # an open_clip weights file
            stage = Embed(EmbedConfig(checkpoint=str(weights), model=model, store=str(tmp / f"store-{model}"),
                                      batch_size=args.batch_size))
            started = time.perf_counter()
            stage.setup()
            for start in range(0, pool.num_rows, 256):
                stage.process(pool.slice(start, 256))
            ours = pool.num_rows / (time.perf_counter() - started)
            line = f"{model:>10}: embed stage {ours:7.1f} images/s"
            if CR_PYTHON.exists():
                cr_args = {"input_dataset": str(tmp / f"images-{{0..{shards - 1}}}.tar"),
                           "output_folder": str(tmp / f"cr-{model}"), "input_format": "webdataset",
                           "batch_size": args.batch_size,
                           "num_prepro_workers": os.cpu_count(), "enable_text": True, "enable_image": True,
                           "clip_model": f"open_clip:{model}/{weights}", "use_jit": False,
                           "enable_wandb": False, "write_batch_size": 10**6}
                out = subprocess.run([str(CR_PYTHON), str(launcher), json.dumps(cr_args)], capture_output=True,
                                     text=True)
                seconds = [float(s) for s in re.findall(r"CR_SECONDS ([0-9.]+)", out.stdout)]
                if out.returncode or not seconds:
                    line += f"  clip-retrieval failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
                else:
                    theirs = pool.num_rows / seconds[0]
                    line += f"  clip-retrieval {theirs:7.1f} images/s  ratio {ours / theirs:.2f}x (target >= 1)"
            else:
                line += "  (no bench/.venv-cr: run `make bench-cr` for clip-retrieval)"
            print(line, flush=True)


def bench_calibrate(args) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    from curate.models.embedder import ClipEmbedder
    from curate.sample.near_copies import KINDS, near_copies

    pool = pq.read_table(ROOT / "data" / "openclipart" / "pool", columns=["image"])["image"].to_pylist()
    drawings = list(dict.fromkeys(d for d in pool if min(Image.open(io.BytesIO(d)).size) >= 256))[: args.images]
    embedder = ClipEmbedder(args.calibrate, args.model)
    originals = embedder.embed(drawings, [None] * len(drawings)).image
    sims = originals @ originals.T
    np.fill_diagonal(sims, -1)
    nearest_other = sims.max(axis=1)
    copies = [near_copies(d) for d in drawings[: args.copies]]
    copy_cosine = {kind: (embedder.embed([c[kind] for c in copies], [None] * len(copies)).image
                          * originals[: len(copies)]).sum(axis=1) for kind in KINDS}
    print(f"\ncalibration of {args.calibrate}: {len(drawings)} distinct drawings >= 256 px, "
          f"near copies of {len(copies)}")
    print("threshold  " + "  ".join(f"{kind:>9}" for kind in KINDS) + "  distinct merged")
    for threshold in args.thresholds:
        recalls = "  ".join(f"{(copy_cosine[kind] >= threshold).mean():9.3f}" for kind in KINDS)
        print(f"{threshold:9.3f}  {recalls}  {(nearest_other >= threshold).mean():15.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=0.012,
                        help="per-dimension noise of a planted copy (of a unit vector)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--index", choices=["ivf", "hnsw"], default="ivf")
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--neighbours", type=int, default=4)
    parser.add_argument("--flat-queries", type=int, default=20_000, help="0: exact search over every query")
    parser.add_argument("--embed", action="store_true", help="also measure embedding throughput")
    parser.add_argument("--skip-dedup", action="store_true")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["clip-tiny", "ViT-B-32"])
    parser.add_argument("--calibrate", metavar="CHECKPOINT", help="measure this scorer on near copies of pool drawings")
    parser.add_argument("--model", help="open_clip architecture of a plain open_clip weights file given to --calibrate")
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.95, 0.98, 0.99, 0.995])
    args = parser.parse_args()
    if not args.skip_dedup:
        bench_dedup(args)
    if args.embed:
        bench_embed(args)
    if args.calibrate:
        bench_calibrate(args)


if __name__ == "__main__":
    main()
