"""Global stages in bounded memory: a pipeline of exact dedup, near dedup (on a precomputed pHash
column) and a top fraction over three million metadata rows runs under a per-process memory cap
(RLIMIT_DATA on the driver and, inherited, on every local worker), every process's peak RSS
stays under RSS_LIMIT, and the output equals a run without the cap. Holding every key in one
process, as the stages did before they became distributed fits (a Python dict of 3M url+caption
hashes in the driver and in each worker), needs more than that: 699d71c, running exact dedup
alone on these rows, died with MemoryError under a 700 MiB RLIMIT_DATA. Peak RSS here is about
0.45 GB a process, at 1M rows and at 3M alike."""

import json
import resource
import subprocess
import sys
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.engines.helpers import read_output

ROWS = 3_000_000
CAP_BYTES = 2**30  # RLIMIT_DATA counts reserved address space too: a process of ~0.45 GB RSS maps ~1.4 GB
# each process's measured peak (the driver and each of the two workers): the 3M keys alone would
# take ~0.7 GB in a dict
RSS_LIMIT = 600 * 2**20
PIPELINE = """
name: capped
batch_size: 65536
partition_rows: 100000
stages:
  - stage: caption
    min_words: 2
  - stage: exact_dedup
    key: url_text
  - stage: near_dedup
    hash_column: phash
    radius: 3
  - stage: clip_score
    score_column: score
    top_fraction: 0.3
"""


@pytest.fixture(scope="module")
def metadata_pool(tmp_path_factory):
    """ROWS DataComp-shaped metadata rows (uid, url, text, score, phash), exact url+caption
    repeats drawn at random (about a third of the rows repeat an earlier url and caption) and 5%
    near copies (a pHash 2 bits from another row's), in 24 files of 2 row groups."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, ROWS * 9 // 10, ROWS)  # drawn with repeats: ~1.8M distinct urls and captions
    words = np.array(["a", "red", "cat", "on", "the", "mat", "photo", "of", "blue", "sky"], dtype=object)
    captions = pa.array([" ".join(words[(i * 7 + np.arange(1 + i % 6)) % 10]) for i in range(ROWS * 9 // 10)])
    uid_bytes = rng.integers(0, 2**63, (ROWS, 2), dtype=np.int64).view(np.uint64)
    table = pa.table({
        "uid": pa.array([f"{a:016x}{b:016x}" for a, b in uid_bytes]),
        "url": pa.array(np.char.add("https://example.test/", ids.astype(str)).astype(object)),
        "text": captions.take(pa.array(ids)),
        "score": pa.array(rng.random(ROWS, dtype=np.float32)),
        "phash": pa.array(near_copies(rng, rng.integers(-2**63, 2**63 - 1, ROWS, dtype=np.int64), ROWS // 20)),
    })
    folder = tmp_path_factory.mktemp("metadata")
    for part in range(24):
        pq.write_table(table.slice(part * ROWS // 24, ROWS // 24), folder / f"part-{part}.parquet",
                       row_group_size=ROWS // 48)
    return folder


def near_copies(rng, hashes: np.ndarray, copies: int) -> np.ndarray:
    """`hashes` with `copies` rows replaced by another row's hash with two bits flipped."""
    targets, sources = rng.choice(len(hashes), (2, copies), replace=False)
    bits = rng.integers(0, 64, (copies, 2))
    flips = (np.int64(1) << bits[:, 0]) ^ (np.int64(1) << bits[:, 1])
    hashes[targets] = hashes[sources] ^ flips
    return hashes


def run(pipeline_file, source, out, cap: int | None) -> tuple[dict, int]:
    """Run the pipeline in a subprocess (2 local workers) under an optional RLIMIT_DATA; its stats
    and the largest peak RSS of any of its processes (polled every 50 ms)."""
    def limit():
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    command = [sys.executable, "-m", "curate.cli", "run", str(pipeline_file), "--input", str(source),
               "--output", str(out), "--workers", "2", "--quiet"]
    process = subprocess.Popen(command, preexec_fn=limit, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.Error:
            break
        for proc in tree:
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.05)
    stderr = process.communicate(timeout=900)[1]
    assert process.returncode == 0, stderr[-3000:]
    return json.loads((out / "stats.json").read_text()), peak


def test_global_stages_run_under_a_memory_cap_with_the_uncapped_result(metadata_pool, tmp_path):
    pipeline_file = tmp_path / "capped.yaml"
    pipeline_file.write_text(PIPELINE)
    capped, peak = run(pipeline_file, metadata_pool, tmp_path / "capped", CAP_BYTES)
    run(pipeline_file, metadata_pool, tmp_path / "free", None)
    assert peak < RSS_LIMIT, f"a process peaked at {peak / 2**20:.0f} MiB"
    assert capped["input"] == ROWS and capped["kept"] + capped["rejected"] == ROWS
    reasons = {s["name"]: s["reasons"] for s in capped["stages"]}
    assert reasons["exact_dedup"]["duplicate"] > ROWS // 20 and reasons["clip_score"]["low_clip_score"] > 0
    assert reasons["near_dedup"]["near_duplicate"] > ROWS // 100  # planted copies whose both ends survive
    got, expected = read_output(tmp_path / "capped"), read_output(tmp_path / "free")
    assert got == expected
    assert np.array_equal(np.load(tmp_path / "capped" / "uids.npy"), np.load(tmp_path / "free" / "uids.npy"))
