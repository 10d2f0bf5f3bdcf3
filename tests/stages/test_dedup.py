"""Exact and perceptual dedup: the fit/apply contract, the keep rule, planted near-duplicates."""

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.engines.driver import run_global_stage
from curate.engines.local import LocalEngine
from curate.stages.exact_dedup import ExactDedup, ExactDedupConfig
from curate.stages.near_dedup import NearDedup, NearDedupConfig, find_near_duplicates


def run_global(stage, table, batch_rows=7, workers=1):
    """Fit as a run does (tasks of `batch_rows`, a shuffle of small partitions on the local
    engine, the state through disk), then apply."""
    return run_global_stage(stage, table, LocalEngine(workers, progress=False), task_rows=batch_rows, partition_rows=5)


def test_exact_dedup_keeps_the_smallest_uid(pool_table):
    images = pool_table.column("image").to_pylist()[:10]
    uids = [f"{i + 10:032x}" for i in range(10)] + ["f" * 32, "0" * 32]
    table = pa.table({"uid": uids, "url": [None] * 12, "text": ["t"] * 12,
                      "image": pa.array(images + [images[3], images[3]], pa.binary())})
    _, verdict = run_global(ExactDedup(ExactDedupConfig(key="image")), table)
    rejected = {u: v for u, r, v in zip(verdict.table.column("uid").to_pylist(), verdict.reasons, verdict.values) if r}
    assert rejected == {uids[3]: "0" * 32, "f" * 32: "0" * 32}


def test_exact_dedup_keys():
    table = pa.table({"uid": [f"{i:032x}" for i in range(4)], "url": ["u1", "u1", "u2", "u1"],
                      "text": ["cat", "cat", "cat", "dog"], "image": pa.array([b"A", b"B", b"A", b"A"], pa.binary())})
    reasons = {k: run_global(ExactDedup(ExactDedupConfig(key=k)), table, batch_rows=1)[1].reasons
               for k in ("image", "image_text", "url_text")}
    assert reasons["image"] == [None, None, "duplicate", "duplicate"]
    assert reasons["image_text"] == [None, None, "duplicate", None]
    assert reasons["url_text"] == [None, "duplicate", None, None]


def _variants(data: bytes) -> list[bytes]:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    out = []
    for transform in (lambda i: i, lambda i: i.resize((int(i.width * 0.8), int(i.height * 0.8))),
                      lambda i: i.crop((3, 3, i.width - 3, i.height - 3))):
        buffer = io.BytesIO()
        transform(im).save(buffer, format="JPEG", quality=50)
        out.append(buffer.getvalue())
    return out


def test_planted_near_duplicates_are_found(pool_table):
    originals, seen = [], set()
    for data in pool_table.column("image").to_pylist():
        if data not in seen and min(Image.open(io.BytesIO(data)).size) >= 128:
            seen.add(data)
            originals.append(data)
    originals = originals[:40]
    rows = [(f"0{i:031x}", d) for i, d in enumerate(originals)]
    planted = {}
    for i, data in enumerate(originals):
        for k, variant in enumerate(_variants(data)):
            uid = f"f{k}{i:030x}"
            planted[uid] = rows[i][0]
            rows.append((uid, variant))
    table = pa.table({"uid": [u for u, _ in rows], "image": pa.array([d for _, d in rows], pa.binary())})
    stage = NearDedup(NearDedupConfig(radius=6))
    processed, verdict = run_global(stage, table)
    assert processed.reasons == [None] * len(rows)
    dropped = {u: v for u, v, r in zip(verdict.table.column("uid").to_pylist(), verdict.values, verdict.reasons) if r}
    found = [u for u in planted if u in dropped]
    recall = len(found) / len(planted)
    assert recall >= 0.9, f"recall of planted near-duplicates {recall:.2f}"
    # a planted copy is dropped in favour of its own original (or a copy of it kept in its place)
    assert sum(dropped[u] == planted[u] for u in found) >= 0.9 * len(found)
    # distinct drawings survive: at most a few originals merge, and only with a pHash twin
    hashes = dict(zip(processed.table.column("uid").to_pylist(), processed.table.column("phash").to_pylist()))
    merged_originals = [u for u in dropped if u.startswith("0")]
    assert len(merged_originals) <= 2
    for uid in merged_originals:
        assert bin((hashes[uid] ^ hashes[dropped[uid]]) & (2**64 - 1)).count("1") <= 6


def test_faiss_search_matches_brute_force_at_the_radius():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=3000, dtype=np.int64).astype(np.uint64)
    for i in range(0, 60, 3):  # plant pairs at distance exactly radius and radius + 1
        flip = rng.choice(64, size=5 if i % 2 else 4, replace=False)
        hashes[i + 1] = hashes[i] ^ np.uint64(sum(1 << int(b) for b in flip))
    uids = [f"{i:032x}" for i in range(len(hashes))]
    got = find_near_duplicates(uids, hashes, radius=4)
    expected = {}
    for i in range(len(hashes)):  # greedy keep-smallest-uid, all pairs
        if uids[i] in expected:
            continue
        for j in range(i + 1, len(hashes)):
            if uids[j] not in expected and bin(int(hashes[i] ^ hashes[j])).count("1") <= 4:
                expected[uids[j]] = uids[i]
    assert got == expected
    assert len(got) >= 10
