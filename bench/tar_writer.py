"""Benchmark: WebDataset members/s of PartWriter's tar, against a git revision's writer.

Writes N synthetic kept rows (uid, url, text, JPEG-like image bytes of 2-30 kB, width, height,
lang, lang_score; default 200k) through PartWriter in batches of --batch-size and prints the tar's
members/s: three members a sample over the process CPU time (user + system, so the writes to
the page cache count; wall time on a shared machine is too noisy) spent in PartWriter._write_tar.
With --baseline REV, curate/io/writers.py as committed at REV runs too, alternating, and the
two tars must be byte for byte the same.

Usage: .venv/bin/python bench/tar_writer.py [--rows 200000] [--batch-size 4096] [--baseline HEAD]
                                            [--image-bytes 100,300]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import subprocess
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa

from common import ROOT


def synthetic_rows(n: int, image_bytes: tuple[int, int] = (2_000, 30_000), seed: int = 0) -> pa.Table:
    """`n` kept rows shaped like a decoded, language-tagged run's output."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(*image_bytes, n)
    blob = bytearray(rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8).tobytes())
    offsets = np.r_[0, np.cumsum(sizes)]
    for start in offsets[:-1].tolist():
        blob[start : start + 3] = b"\xff\xd8\xff"  # a JPEG's magic number
    buffers = [None, pa.py_buffer(offsets.astype(np.int64).tobytes()), pa.py_buffer(bytes(blob))]
    images = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, buffers).cast(pa.binary())
    words = np.array("a red fox jumping over the wooden fence in snow drawing of cat with hat".split(), dtype=object)
    texts = [" ".join(words[rng.integers(0, len(words), k)]) for k in rng.integers(2, 20, n).tolist()]
    return pa.table({
        "uid": [f"{i:032x}" for i in range(n)], "url": [f"http://example.test/{i}.jpg" for i in range(n)],
        "text": texts, "image": images, "width": pa.array(rng.integers(64, 1024, n), pa.int32()),
        "height": pa.array(rng.integers(64, 1024, n), pa.int32()), "lang": ["en"] * n,
        "lang_score": pa.array(rng.random(n), pa.float32()),
    })


def writers_module(revision: str | None):
    """curate.io.writers from the working tree, or as committed at git `revision`."""
    if revision is None:
        return importlib.import_module("curate.io.writers")
    source = subprocess.run(["git", "show", f"{revision}:curate/io/writers.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("baseline_writers")
    exec(compile(source, f"{revision}:curate/io/writers.py", "exec"), module.__dict__)
    return module


def tar_seconds(writers, batches: list[pa.Table], folder: Path) -> float:
    """CPU seconds PartWriter spends writing the tar members of every batch."""
    spent = 0.0
    with writers.PartWriter(folder / "part.parquet", folder / "part.tar") as writer:
        write_tar = writer._write_tar

        def timed(table: pa.Table) -> None:
            nonlocal spent
            start = time.process_time()
            write_tar(table)
            spent += time.process_time() - start

        writer._write_tar = timed
        for batch in batches:
            writer.write(batch)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--baseline", help="git revision whose writer to time as well (e.g. HEAD)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best counts")
    parser.add_argument("--image-bytes", default="2000,30000", help="image sizes drawn from MIN,MAX bytes")
    args = parser.parse_args()
    low, high = map(int, args.image_bytes.split(","))
    table = synthetic_rows(args.rows, (low, high))
    batches = [table.slice(i, args.batch_size) for i in range(0, table.num_rows, args.batch_size)]
    members = 3 * args.rows
    runs = {"now": writers_module(None)}
    if args.baseline:
        runs[args.baseline] = writers_module(args.baseline)
    best: dict[str, float] = {}
    digests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for label, writers in runs.items():
                folder = Path(tmp) / label
                folder.mkdir(exist_ok=True)
                seconds = tar_seconds(writers, batches, folder)
                best[label] = min(seconds, best.get(label, seconds))
                digests[label] = hashlib.sha256((folder / "part.tar").read_bytes()).hexdigest()
    if args.baseline and digests[args.baseline] != digests["now"]:
        raise SystemExit(f"the tars differ from {args.baseline}'s")
    print(f"{args.rows:,} samples ({members:,} members, images of {low:,}-{high:,} B), batches of {args.batch_size}, "
          f"best of {args.repeats}")
    for label, seconds in best.items():
        print(f"{label:8s} {members / seconds:12,.0f} members/s ({seconds * 1e6 / members:.2f} us a member, "
              f"{seconds:.2f} s CPU)")
    if args.baseline:
        print(f"speed-up x{best[args.baseline] / best['now']:.1f}")


if __name__ == "__main__":
    main()
