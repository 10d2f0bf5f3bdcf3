"""Exact and perceptual dedup: the fit/apply contract, the keep rule, planted near-duplicates."""

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.engines.driver import run_global_stage
from curate.engines.local import LocalEngine
from curate.stage import Verdict
from curate.stages import near_dedup
from curate.stages.exact_dedup import ExactDedup, ExactDedupConfig
from curate.stages.near_dedup import NearDedup, NearDedupConfig, hamming


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
    reasons = {k: run_global(ExactDedup(ExactDedupConfig(key=k)), table, batch_rows=1)[1].reasons.tolist()
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
    assert processed.reasons.tolist() == [None] * len(rows)
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


class GivenHashes(NearDedup):
    """near_dedup over a table that already has its phash column (random hashes, no images)."""

    def process(self, table: pa.Table) -> Verdict:
        return Verdict(table)


def _flip(hash_: np.uint64, bits, rng) -> np.uint64:
    """`hash_` with `bits` random bits flipped."""
    return hash_ ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, size=bits, replace=False)))


@pytest.fixture(scope="module")
def planted_hashes():
    """3,000 random 64-bit hashes (half of them sharing their first 12 bits, a bucket of 1,500
    that is verified in tiles) with planted pairs at exactly radius 4 and 5 bits, a chain
    a~b~c~d of 4-bit steps (a and d 12 bits apart), and identical copies, uids in random order."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, size=3000, dtype=np.uint64)
    hashes[:1500] = (hashes[:1500] & np.uint64(2**52 - 1)) | np.uint64(0xA5C << 52)
    pairs = {}
    for i in range(0, 60, 3):
        hashes[i + 1] = _flip(hashes[i], 5 if i % 2 else 4, rng)
        pairs[i] = 5 if i % 2 else 4
    chain = [2000, 2001, 2002, 2003]
    for a, b in zip(chain, chain[1:]):
        while True:  # each step moves 4 new bits, so the ends drift apart
            step = _flip(hashes[a], 4, rng)
            if bin(int(step ^ hashes[chain[0]])).count("1") == 4 * (b - chain[0]):
                hashes[b] = step
                break
    hashes[2500:2503] = hashes[2000]  # copies of the chain's start
    hashes[2600:2604] = hashes[2600]  # copies of an isolated hash
    uids = np.array([f"{i:032x}" for i in rng.permutation(len(hashes))], dtype=object)
    table = pa.table({"uid": pa.array(uids, pa.string()), "phash": pa.array(hashes.view(np.int64))})
    return table, pairs, chain


def brute_force_components(table: pa.Table, radius: int) -> dict[str, str]:
    """The reference: every pair within `radius`, connected components, each keeps its smallest uid."""
    hashes, uids = table.column("phash").to_numpy(), np.array(table.column("uid").to_pylist(), dtype=object)
    a, b = np.nonzero(np.triu(hamming(hashes[:, None], hashes[None, :]) <= radius, k=1))
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(uids),) * 2), directed=False)
    expected = {}
    for members in np.split(np.argsort(component, kind="stable"), np.flatnonzero(np.diff(np.sort(component))) + 1):
        kept = min(uids[members])
        expected.update({uids[m]: kept for m in members if uids[m] != kept})
    return expected


def _near_duplicates(table: pa.Table, radius: int, workers: int, partition_rows: int) -> dict[str, str]:
    _, verdict = run_global_stage(GivenHashes(NearDedupConfig(radius=radius)), table,
                                  LocalEngine(workers, progress=False), task_rows=64, partition_rows=partition_rows)
    assert set(verdict.reasons) <= {None, "near_duplicate"}
    return {u: v for u, r, v in zip(verdict.table.column("uid").to_pylist(), verdict.reasons, verdict.values) if r}


def test_components_match_brute_force_at_the_radius(planted_hashes):
    table, pairs, chain = planted_hashes
    uids = table.column("uid").to_pylist()
    expected = brute_force_components(table, radius=4)
    got = {workers: _near_duplicates(table, 4, workers, partition_rows=200) for workers in (1, 2)}
    assert got[1] == got[2] == expected
    dropped = got[1]
    for i, bits in pairs.items():  # at the radius merged, one bit past it apart
        assert ((uids[i] in dropped) or (uids[i + 1] in dropped)) == (bits == 4), (i, bits)
    # the chain is one component: its ends merge though 12 bits apart, and so do the start's copies
    members = [uids[i] for i in chain + [2500, 2501, 2502]]
    assert {dropped.get(u, u) for u in members} == {min(members)}
    copies = [uids[i] for i in range(2600, 2604)]
    assert {u: dropped[u] for u in copies if u != min(copies)} == {u: min(copies) for u in copies if u != min(copies)}


def test_radius_zero_merges_identical_hashes_only(planted_hashes):
    table, _, _ = planted_hashes
    assert _near_duplicates(table, 0, 1, partition_rows=500) == brute_force_components(table, radius=0)


def test_bucket_tiles_and_forest_limits_do_not_change_the_result(planted_hashes, monkeypatch):
    table, _, _ = planted_hashes
    expected = brute_force_components(table, radius=4)
    monkeypatch.setattr(near_dedup, "TILE", 8)  # workers=1 runs in this process, so these apply
    monkeypatch.setattr(near_dedup, "EDGE_LIMIT", 2)
    assert _near_duplicates(table, 4, 1, partition_rows=100_000) == expected
