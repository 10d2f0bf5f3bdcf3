"""Exact and perceptual dedup: the fit/apply contract, the keep rule, planted near-duplicates."""

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate import pigeonhole
from curate.copyhash import copy_hashes, hamming
from curate.engines.driver import run_global_stage
from curate.engines.local import LocalEngine
from curate.stage import Verdict
from curate.stages.copy_method import INLIERS, RADIUS
from curate.stages.exact_dedup import ExactDedup, ExactDedupConfig
from curate.stages.near_dedup import NearDedup, NearDedupConfig


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
    monkeypatch.setattr(pigeonhole, "TILE", 8)  # workers=1 runs in this process, so these apply
    monkeypatch.setattr(pigeonhole, "EDGE_LIMIT", 2)
    assert _near_duplicates(table, 4, 1, partition_rows=100_000) == expected


class GivenCodes(NearDedup):
    """near_dedup's `hashes` method over a table that already has its copy_hashes column."""

    def process(self, table: pa.Table) -> Verdict:
        return Verdict(table)


def _flip_code(code: np.ndarray, bits: int, rng) -> np.ndarray:
    """A 192-bit code (three words) with `bits` random bits of the 192 flipped."""
    out = code.copy()
    for b in rng.choice(192, size=bits, replace=False):
        out[b // 64] ^= np.uint64(1 << int(63 - b % 64))
    return out


@pytest.fixture(scope="module")
def planted_codes():
    """2,000 random 192-bit codes, 800 of them sharing their first 40 bits (one bucket verified in
    tiles), with planted pairs whose summed distance is exactly 10 (the radius) or 11, a chain of
    8-bit steps and identical copies, uids in random order."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2**64, size=(2000, 3), dtype=np.uint64)
    codes[:800, 0] = (codes[:800, 0] & np.uint64(2**24 - 1)) | np.uint64(0xABCDEF12AB << 24)
    pairs = {}
    for i in range(0, 60, 3):
        pairs[i] = 11 if i % 2 else 10
        codes[i + 1] = _flip_code(codes[i], pairs[i], rng)
    chain = [1500, 1501, 1502]
    for a, b in zip(chain, chain[1:]):
        codes[b] = _flip_code(codes[a], 8, rng)
    codes[1900:1903] = codes[1500]
    uids = np.array([f"{i:032x}" for i in rng.permutation(len(codes))], dtype=object)
    table = pa.table({"uid": pa.array(uids, pa.string()),
                      "copy_hashes": pa.array(codes.view(np.int64).tolist(), pa.list_(pa.int64()))})
    return table, pairs, chain


def brute_force_code_components(table: pa.Table, radius: int) -> dict[str, str]:
    """The reference for multi-word codes: every pair whose summed Hamming distance is within
    `radius`, connected components, each keeps its smallest uid."""
    codes = np.array(table.column("copy_hashes").to_pylist(), np.int64)
    uids = np.array(table.column("uid").to_pylist(), dtype=object)
    distance = hamming(codes[:, None, :], codes[None, :, :]).sum(axis=-1)
    a, b = np.nonzero(np.triu(distance <= radius, k=1))
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(uids),) * 2), directed=False)
    expected = {}
    for label in np.unique(component):
        members = np.flatnonzero(component == label)
        kept = min(uids[members])
        expected.update({uids[m]: kept for m in members if uids[m] != kept})
    return expected


def _code_duplicates(table, radius, workers, partition_rows):
    stage = GivenCodes(NearDedupConfig(method="hashes", radius=radius))
    _, verdict = run_global_stage(stage, table, LocalEngine(workers, progress=False), task_rows=64,
                                  partition_rows=partition_rows)
    return {u: v for u, r, v in zip(verdict.table.column("uid").to_pylist(), verdict.reasons, verdict.values) if r}


def test_multi_hash_components_match_brute_force_at_the_summed_radius(planted_codes, monkeypatch):
    table, pairs, chain = planted_codes
    uids = table.column("uid").to_pylist()
    expected = brute_force_code_components(table, radius=10)
    got = {workers: _code_duplicates(table, 10, workers, partition_rows=150) for workers in (1, 2)}
    assert got[1] == got[2] == expected
    for i, bits in pairs.items():  # at the radius merged, one bit past it apart
        assert ((uids[i] in expected) or (uids[i + 1] in expected)) == (bits == 10), (i, bits)
    members = [uids[i] for i in chain + [1900, 1901, 1902]]  # a chain 16 bits end to end, and copies of its start
    assert {expected.get(u, u) for u in members} == {min(members)}
    monkeypatch.setattr(pigeonhole, "TILE", 8)  # workers=1 runs in this process, so these apply
    monkeypatch.setattr(pigeonhole, "EDGE_LIMIT", 2)
    assert _code_duplicates(table, 10, 1, partition_rows=100_000) == expected



def _planted_copies(pool_table, kinds, count=40, seed=0):
    """Distinct real pool drawings of >= 128 px (uids 0...) and a copy of each of the given kinds
    (uids f<k>...), as a table, with each copy's original uid."""
    from curate import copies

    images = [d for d in dict.fromkeys(pool_table.column("image").to_pylist())
              if min(Image.open(io.BytesIO(d)).size) >= 128]
    images = [images[i] for i in copies.distinct(copies.thumbnails(images))][:count]
    rng = np.random.default_rng(seed)
    rows = [(f"0{i:031x}", d) for i, d in enumerate(images)]
    planted = {}
    for k, kind in enumerate(kinds):
        for i, data in enumerate(images):
            planted[f"f{k}{i:030x}"] = rows[i][0]
            rows.append((f"f{k}{i:030x}", copies.copy_of(data, kind, rng)))
    table = pa.table({"uid": [u for u, _ in rows], "image": pa.array([d for _, d in rows], pa.binary()),
                      "text": ["a drawing"] * len(rows)})
    return table, planted


def _dedup_outcome(stage, table, planted):
    """(recall of the planted copies, originals merged with another original's group, dropped uids -> kept)."""
    _, verdict = run_global(stage, table, batch_rows=32)
    dropped = {u: v for u, v, r in zip(verdict.table.column("uid").to_pylist(), verdict.values, verdict.reasons) if r}
    recall = np.mean([dropped.get(u, u) == dropped.get(o, o) for u, o in planted.items()])  # in one group
    return recall, [u for u in dropped if u.startswith("0")], dropped


def test_multi_hash_finds_altered_copies_that_phash_misses(pool_table):
    table, planted = _planted_copies(pool_table, ["border", "colour", "flip", "crop", "jpeg"])
    phash_recall, phash_merged, _ = _dedup_outcome(NearDedup(NearDedupConfig(radius=4)), table, planted)
    hashes = NearDedup(NearDedupConfig(method="hashes", radius=8))
    hashes_recall, hashes_merged, dropped = _dedup_outcome(hashes, table, planted)
    assert hashes_recall >= phash_recall + 0.2, (hashes_recall, phash_recall)
    assert len(hashes_merged) <= max(len(phash_merged), 1)
    codes = {u: copy_hashes(d) for u, d in zip(table.column("uid").to_pylist(),
                                                         table.column("image").to_pylist())}
    for uid in hashes_merged:  # a merged original is a chain of pairs within the radius: its own nearest is one
        distances = [sum(bin(a ^ b).count("1") for a, b in zip(codes[uid], code)) for u, code in codes.items()
                     if u != uid]
        assert min(distances) <= 8



def test_method_settings_are_checked():
    assert NearDedupConfig().chosen == "phash" and NearDedupConfig(checkpoint="x.pt").chosen == "descriptor"
    with pytest.raises(ValueError, match="method descriptor needs checkpoint"):
        NearDedupConfig(method="descriptor")
    with pytest.raises(ValueError, match="checkpoint, threshold are for method descriptor, not hashes"):
        NearDedupConfig(method="hashes", checkpoint="x.pt", threshold=0.9)
    with pytest.raises(ValueError, match="hash_column holds pHashes"):
        NearDedupConfig(method="hashes", hash_column="h")
    with pytest.raises(ValueError, match="radius is for the hash methods"):
        NearDedupConfig(checkpoint="x.pt", radius=3)
    assert NearDedupConfig(method="hashes").hash_radius == RADIUS["near_dedup"]["hashes"]


def _descriptor_components(table: pa.Table, checkpoint, threshold: float) -> dict[str, str]:
    """The reference for the descriptor: every pair of the table's images at or above the cosine
    `threshold` (float16 descriptors, as the stage keeps them), connected components, each keeps
    its smallest uid."""
    from curate.models.copydetect import CopyDescriptor

    _, vectors, failures = CopyDescriptor.shared(str(checkpoint)).embed(table.column("image").to_pylist())
    assert not failures
    vectors = vectors.astype(np.float16).astype(np.float32)
    a, b = np.nonzero(np.triu(vectors @ vectors.T >= threshold, k=1))
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(vectors),) * 2),
                                        directed=False)
    uids = np.array(table.column("uid").to_pylist(), dtype=object)
    kept = {label: min(uids[component == label]) for label in np.unique(component)}
    return {u: kept[component[i]] for i, u in enumerate(uids) if u != kept[component[i]]}


def _dropped(verdict: Verdict) -> dict[str, str]:
    """Rejected uids -> the kept uid each names."""
    return {u: v for u, r, v in zip(verdict.table.column("uid").to_pylist(), verdict.reasons, verdict.values) if r}


def test_without_a_checkpoint_near_dedup_is_phash_at_radius_4_on_real_drawings(pool_table):
    table, planted = _planted_copies(pool_table, ["jpeg", "resize", "colour"], count=30)
    config = NearDedupConfig()
    assert (config.chosen, config.hash_radius) == ("phash", RADIUS["near_dedup"]["phash"]) == ("phash", 4)
    processed, verdict = run_global(NearDedup(config), table, batch_rows=32)
    dropped = _dropped(verdict)
    assert dropped == brute_force_components(processed.table, radius=4)
    assert np.mean([dropped.get(u, u) == dropped.get(o, o) for u, o in planted.items()]) >= 0.75


def test_with_a_checkpoint_near_dedup_is_the_descriptor_at_its_calibrated_threshold(pool_table,
                                                                                  calibrated_copydetect):
    table, _ = _planted_copies(pool_table, ["jpeg", "flip", "crop"], count=30)
    calibrated = json.loads(calibrated_copydetect.with_suffix(".json").read_text())["threshold"]
    stage = NearDedup(NearDedupConfig(checkpoint=str(calibrated_copydetect), neighbours=200))
    assert stage.config.chosen == "descriptor" and calibrated is not None
    _, verdict = run_global(stage, table, batch_rows=32)
    assert stage.descriptors.threshold == calibrated
    assert _dropped(verdict) == _descriptor_components(table, calibrated_copydetect, calibrated)


def test_descriptor_dedup_is_the_components_of_its_pairs(pool_table, copydetect_checkpoint, tmp_path):
    from curate.models.copydetect import CopyDescriptor

    table, _ = _planted_copies(pool_table, ["jpeg", "flip", "crop"], count=30)
    model = CopyDescriptor.shared(str(copydetect_checkpoint))
    _, vectors, _ = model.embed(table.column("image").to_pylist())
    vectors = vectors.astype(np.float16).astype(np.float32)
    cosines = vectors @ vectors.T
    threshold = float(np.quantile([cosines[int(u[2:], 16), i] for i, u in enumerate(table.column("uid").to_pylist())
                                   if u.startswith("f")], 0.5))  # half the copies at or above it
    expected = _descriptor_components(table, copydetect_checkpoint, threshold)
    config = {"checkpoint": str(copydetect_checkpoint), "threshold": threshold, "neighbours": 200}
    for settings in ({}, {"store": str(tmp_path / "store")}):
        for workers in (1, 2):
            stage = NearDedup(NearDedupConfig(**config, **settings))
            _, verdict = run_global_stage(stage, table, LocalEngine(workers, progress=False), task_rows=32,
                                          partition_rows=20)
            assert _dropped(verdict) == expected, (settings, workers)
    described = model.images_described
    run_global(NearDedup(NearDedupConfig(**config, store=str(tmp_path / "store"))), table)
    assert model.images_described == described  # every descriptor read back from the store


def test_descriptor_is_the_same_for_an_image_and_its_mirror(copydetect_checkpoint):
    import torch

    from curate.models.copydetect import describe, load

    net, _ = load(copydetect_checkpoint)
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(describe(net, batch), describe(net, torch.flip(batch, dims=[3])), atol=1e-6)


def _verified_components(table: pa.Table, checkpoint, candidates: int, inliers: int) -> dict[str, str]:
    """The reference for verified: each image's `candidates` nearest by the descriptor (float16, as
    the stage keeps them; ties by row), the pairs whose keypoints have at least `inliers` inliers,
    connected components, each keeps its smallest uid."""
    from curate.copyverify import inliers as pair_inliers
    from curate.copyverify import keypoints
    from curate.models.copydetect import CopyDescriptor

    images = table.column("image").to_pylist()
    _, vectors, _ = CopyDescriptor.shared(str(checkpoint)).embed(images)
    vectors = vectors.astype(np.float16).astype(np.float32)
    cosines = vectors @ vectors.T
    np.fill_diagonal(cosines, -np.inf)
    near = np.argsort(-cosines, axis=1, kind="stable")[:, :candidates]
    packed = [keypoints(d) for d in images]
    pairs = {(min(i, int(j)), max(i, int(j))) for i, row in enumerate(near) for j in row}
    a, b = np.array([p for p in pairs if pair_inliers(packed[p[0]], packed[p[1]]) >= inliers]).reshape(-1, 2).T
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(images),) * 2),
                                        directed=False)
    uids = np.array(table.column("uid").to_pylist(), dtype=object)
    kept = {label: min(uids[component == label]) for label in np.unique(component)}
    return {u: kept[component[i]] for i, u in enumerate(uids) if u != kept[component[i]]}


def test_verified_dedup_is_the_components_of_the_verified_candidates(pool_table, copydetect_checkpoint):
    table, planted = _planted_copies(pool_table, ["crop", "rotate", "border", "mixed"], count=20)
    config = NearDedupConfig(method="verified", checkpoint=str(copydetect_checkpoint), candidates=6, inliers=12)
    assert config.verify_inliers == 12 and NearDedupConfig(method="verified", checkpoint="x.pt").verify_inliers == \
        INLIERS["near_dedup"]
    expected = _verified_components(table, copydetect_checkpoint, 6, 12)
    recall, _, dropped = _dedup_outcome(NearDedup(config), table, planted)
    assert dropped == expected
    _, verdict = run_global_stage(NearDedup(config), table, LocalEngine(2, progress=False), task_rows=16,
                                  partition_rows=20)
    assert _dropped(verdict) == expected
    phash_recall, _, _ = _dedup_outcome(NearDedup(NearDedupConfig()), table, planted)
    # a mixed copy with an overlaid word over copyverify.MAX_DIFFERING of the image fails verification
    assert recall >= 0.7 and recall >= phash_recall + 0.5, (recall, phash_recall)


def test_verified_settings_are_checked():
    with pytest.raises(ValueError, match="method verified needs checkpoint"):
        NearDedupConfig(method="verified")
    with pytest.raises(ValueError, match="inliers are for method verified, not descriptor"):
        NearDedupConfig(checkpoint="x.pt", inliers=10)
    with pytest.raises(ValueError, match="method verified takes inliers, not threshold"):
        NearDedupConfig(method="verified", checkpoint="x.pt", threshold=0.9)
    with pytest.raises(ValueError, match="radius is for the hash methods; method verified takes inliers"):
        NearDedupConfig(method="verified", checkpoint="x.pt", radius=3)
