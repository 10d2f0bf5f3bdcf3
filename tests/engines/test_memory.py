"""Global stages in bounded memory: a pipeline of exact dedup and a top fraction over a million
metadata rows runs under a per-process memory cap (RLIMIT_DATA on the driver and, inherited, on
every local worker) too small to hold the pool's keys, and gives the same output as a run
without the cap. Holding every key in one process, as the stages did before they became
distributed fits (a Python dict of 1M url+caption hashes in the driver and in each worker),
dies with MemoryError under this cap on these rows."""

import json
import resource
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.engines.helpers import read_output

ROWS = 1_000_000
CAP_BYTES = 600 * 2**20  # per process: the driver and each of the two workers
PIPELINE = """
name: capped
batch_size: 65536
partition_rows: 100000
stages:
  - stage: caption
    min_words: 2
  - stage: exact_dedup
    key: url_text
  - stage: clip_score
    score_column: score
    top_fraction: 0.3
"""


@pytest.fixture(scope="module")
def metadata_pool(tmp_path_factory):
    """ROWS DataComp-shaped metadata rows (uid, url, text, score), 10% exact url+caption repeats,
    in 8 files of 2 row groups."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, ROWS * 9 // 10, ROWS)  # ~10% of rows repeat an earlier url and caption
    words = np.array(["a", "red", "cat", "on", "the", "mat", "photo", "of", "blue", "sky"], dtype=object)
    captions = pa.array([" ".join(words[(i * 7 + np.arange(1 + i % 6)) % 10]) for i in range(ROWS * 9 // 10)])
    uid_bytes = rng.integers(0, 2**63, (ROWS, 2), dtype=np.int64).view(np.uint64)
    table = pa.table({
        "uid": pa.array([f"{a:016x}{b:016x}" for a, b in uid_bytes]),
        "url": pa.array(np.char.add("https://example.test/", ids.astype(str)).astype(object)),
        "text": captions.take(pa.array(ids)),
        "score": pa.array(rng.random(ROWS, dtype=np.float32)),
    })
    folder = tmp_path_factory.mktemp("metadata")
    for part in range(8):
        pq.write_table(table.slice(part * ROWS // 8, ROWS // 8), folder / f"part-{part}.parquet",
                       row_group_size=ROWS // 16)
    return folder


def run(pipeline_file, source, out, cap: int | None):
    def limit():
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    result = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(pipeline_file), "--input", str(source),
                             "--output", str(out), "--workers", "2", "--quiet"],
                            preexec_fn=limit, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "stats.json").read_text())


def test_global_stages_run_under_a_memory_cap_with_the_uncapped_result(metadata_pool, tmp_path):
    pipeline_file = tmp_path / "capped.yaml"
    pipeline_file.write_text(PIPELINE)
    capped = run(pipeline_file, metadata_pool, tmp_path / "capped", CAP_BYTES)
    free = run(pipeline_file, metadata_pool, tmp_path / "free", None)
    assert capped["input"] == ROWS and capped["kept"] + capped["rejected"] == ROWS
    reasons = {s["name"]: s["reasons"] for s in capped["stages"]}
    assert reasons["exact_dedup"]["duplicate"] > ROWS // 20 and reasons["clip_score"]["low_clip_score"] > 0
    got, expected = read_output(tmp_path / "capped"), read_output(tmp_path / "free")
    assert got == expected
    assert np.array_equal(np.load(tmp_path / "capped" / "uids.npy"), np.load(tmp_path / "free" / "uids.npy"))
