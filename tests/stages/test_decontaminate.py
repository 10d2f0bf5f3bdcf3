"""Decontamination: planted evaluation images leave a pool, by exact bytes, by pHash, by the
normalised multi-hash and by a copy descriptor."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curate.copyhash import copy_hashes, phash
from curate.stages.copy_method import RADIUS
from curate.stages.decontaminate import Decontaminate, DecontaminateConfig


def test_planted_eval_images_are_removed(pool_root, pool_table):
    eval_table = pq.read_table(pool_root / "eval")
    eval_rows = [r for r in eval_table.to_pylist() if min(Image.open(io.BytesIO(r["image"])).size) >= 64][:5]
    assert eval_rows, "the test pool's eval split has no usable image"
    planted = []
    for k, row in enumerate(eval_rows):
        im = Image.open(io.BytesIO(row["image"])).convert("RGB")
        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=70)
        planted += [(f"e{k:031x}", row["image"], "eval_exact", row["uid"]),
                    (f"f{k:031x}", buffer.getvalue(), "eval_near", row["uid"])]
    pool = pool_table.select(["uid", "image"]).to_pylist()
    table = pa.table({"uid": [r["uid"] for r in pool] + [p[0] for p in planted],
                      "image": pa.array([r["image"] for r in pool] + [p[1] for p in planted], pa.binary())})
    stage = Decontaminate(DecontaminateConfig(eval_data=[str(pool_root / "eval")], radius=4))
    stage.setup()
    verdict = stage.process(table)
    got = {u: (r, v) for u, r, v in zip(table["uid"].to_pylist(), verdict.reasons, verdict.values) if r}
    for uid, _, reason, eval_uid in planted:
        assert got[uid][0] in (reason, "eval_exact") and got[uid][1] in {r["uid"] for r in eval_rows} | {eval_uid}
    # anything else removed from the real pool is within the radius of the eval image it names
    eval_images = dict(zip(eval_table["uid"].to_pylist(), eval_table["image"].to_pylist()))
    pool_images = dict(zip(table["uid"].to_pylist(), table["image"].to_pylist()))
    for uid, (reason, eval_uid) in got.items():
        distance = bin(phash(pool_images[uid]) ^ phash(eval_images[eval_uid])).count("1")
        assert distance <= 4 and (reason == "eval_near" or pool_images[uid] == eval_images[eval_uid])


def _eval_copies(pool_root, kinds):
    """Copies of the test pool's eval drawings (>= 128 px) of each kind, with the eval uid each copies."""
    from curate import copies

    eval_table = pq.read_table(pool_root / "eval")
    rows = [r for r in eval_table.to_pylist() if min(Image.open(io.BytesIO(r["image"])).size) >= 128][:8]
    rng = np.random.default_rng(0)
    return [(f"c{k}{i:030x}", copies.copy_of(r["image"], kind, rng), r["uid"])
            for k, kind in enumerate(kinds) for i, r in enumerate(rows)]


def _decontaminated(config, pool_table, planted):
    pool = pool_table.select(["uid", "image", "text"]).to_pylist()
    table = pa.table({"uid": [r["uid"] for r in pool] + [p[0] for p in planted],
                      "image": pa.array([r["image"] for r in pool] + [p[1] for p in planted], pa.binary()),
                      "text": [r["text"] for r in pool] + ["a copy"] * len(planted)})
    stage = Decontaminate(config)
    stage.setup()
    verdict = stage.process(table)
    return table, {u: (r, v) for u, r, v in zip(table["uid"].to_pylist(), verdict.reasons, verdict.values) if r}


def test_multi_hash_finds_bordered_recoloured_and_mirrored_eval_copies(pool_root, pool_table):
    planted = _eval_copies(pool_root, ["border", "colour", "flip"])
    eval_data = [str(pool_root / "eval")]
    _, by_phash = _decontaminated(DecontaminateConfig(eval_data=eval_data), pool_table, planted)
    table, by_hashes = _decontaminated(DecontaminateConfig(eval_data=eval_data, method="hashes"), pool_table, planted)
    found = {method: sum(got.get(uid) == ("eval_near", eval_uid) for uid, _, eval_uid in planted)
             for method, got in (("phash", by_phash), ("hashes", by_hashes))}
    assert found["hashes"] >= 0.75 * len(planted) and found["hashes"] >= found["phash"] + len(planted) // 3, found
    eval_table = pq.read_table(pool_root / "eval")
    eval_codes = {u: copy_hashes(d) for u, d in zip(eval_table["uid"].to_pylist(), eval_table["image"].to_pylist())}
    images = dict(zip(table["uid"].to_pylist(), table["image"].to_pylist()))
    for uid, (reason, eval_uid) in by_hashes.items():  # every rejection is within the radius of the eval image named
        if reason == "eval_near":
            distance = sum(bin(a ^ b).count("1") for a, b in zip(copy_hashes(images[uid]), eval_codes[eval_uid]))
            assert distance <= RADIUS["decontaminate"]["hashes"]


def _near(got: dict) -> set[str]:
    """The uids rejected as copies (not as exact bytes) of an eval image."""
    return {u for u, (r, _) in got.items() if r == "eval_near"}


def _descriptor_matches(table: pa.Table, eval_table: pa.Table, model, threshold: float) -> set[str]:
    """The reference: uids whose image is at or above the cosine `threshold` to an eval image
    (float16 descriptors, as the stage keeps them) without being one byte for byte."""
    _, eval_vectors, _ = model.embed(eval_table["image"].to_pylist())
    _, vectors, _ = model.embed(table["image"].to_pylist())
    best = (vectors.astype(np.float16).astype(np.float32) @ eval_vectors.astype(np.float16).astype(np.float32).T)
    eval_images = set(eval_table["image"].to_pylist())
    return {u for u, b, d in zip(table["uid"].to_pylist(), best.max(axis=1), table["image"].to_pylist())
            if b >= threshold and d not in eval_images}


def test_without_a_checkpoint_decontaminate_is_phash_at_radius_4_on_real_drawings(pool_root, pool_table):
    planted = _eval_copies(pool_root, ["jpeg", "resize", "colour"])
    config = DecontaminateConfig(eval_data=[str(pool_root / "eval")])
    assert (config.chosen, config.hash_radius) == ("phash", RADIUS["decontaminate"]["phash"]) == ("phash", 4)
    table, got = _decontaminated(config, pool_table, planted)
    eval_table = pq.read_table(pool_root / "eval")
    eval_hashes = np.array([phash(d) for d in eval_table["image"].to_pylist()], np.uint64)
    eval_images = set(eval_table["image"].to_pylist())
    expected = {u for u, d in zip(table["uid"].to_pylist(), table["image"].to_pylist()) if d not in eval_images
                and min(bin(int(h) ^ phash(d)).count("1") for h in eval_hashes) <= 4}
    assert _near(got) == expected
    assert sum(got.get(uid, (None, None))[1] == eval_uid for uid, _, eval_uid in planted) >= 0.75 * len(planted)


def test_with_a_checkpoint_decontaminate_is_the_descriptor_at_its_calibrated_threshold(pool_root, pool_table,
                                                                                      calibrated_copydetect):
    from curate.models.copydetect import CopyDescriptor

    calibrated = json.loads(calibrated_copydetect.with_suffix(".json").read_text())["threshold"]
    config = DecontaminateConfig(eval_data=[str(pool_root / "eval")], checkpoint=str(calibrated_copydetect))
    assert config.chosen == "descriptor" and calibrated is not None
    table, got = _decontaminated(config, pool_table, _eval_copies(pool_root, ["jpeg", "crop"]))
    model = CopyDescriptor.shared(str(calibrated_copydetect))
    assert _near(got) == _descriptor_matches(table, pq.read_table(pool_root / "eval"), model, calibrated)


def test_descriptor_rejects_exactly_the_images_near_an_eval_image(pool_root, pool_table, copydetect_checkpoint,
                                                                 tmp_path):
    from curate.models.copydetect import CopyDescriptor

    planted = _eval_copies(pool_root, ["jpeg", "crop"])
    model = CopyDescriptor.shared(str(copydetect_checkpoint))
    eval_table = pq.read_table(pool_root / "eval")
    _, eval_vectors, _ = model.embed(eval_table["image"].to_pylist())
    eval_vectors = eval_vectors.astype(np.float16).astype(np.float32)
    copy_vectors = model.embed([p[1] for p in planted])[1].astype(np.float16).astype(np.float32)
    threshold = float(np.median((copy_vectors @ eval_vectors.T).max(axis=1)))
    for store in (None, str(tmp_path / "store")):
        config = DecontaminateConfig(eval_data=[str(pool_root / "eval")], checkpoint=str(copydetect_checkpoint),
                                     threshold=threshold, store=store)
        table, got = _decontaminated(config, pool_table, planted)
        expected = _descriptor_matches(table, eval_table, model, threshold)
        assert _near(got) == expected
        assert any(uid in expected for uid, _, _ in planted)


def test_verified_rejects_the_candidates_whose_keypoints_verify(pool_root, pool_table, copydetect_checkpoint):
    from curate.copyverify import inliers, keypoints
    from curate.models.copydetect import CopyDescriptor

    planted = _eval_copies(pool_root, ["crop", "rotate", "mixed"])
    config = DecontaminateConfig(eval_data=[str(pool_root / "eval")], method="verified",
                                 checkpoint=str(copydetect_checkpoint), candidates=4, inliers=12)
    table, got = _decontaminated(config, pool_table, planted)
    eval_table = pq.read_table(pool_root / "eval")
    model = CopyDescriptor.shared(str(copydetect_checkpoint))
    eval_vectors = model.embed(eval_table["image"].to_pylist())[1].astype(np.float16).astype(np.float32)
    vectors = model.embed(table["image"].to_pylist())[1].astype(np.float16).astype(np.float32)
    near = np.argsort(-(vectors @ eval_vectors.T), axis=1, kind="stable")[:, :4]
    eval_packed = [keypoints(d) for d in eval_table["image"].to_pylist()]
    eval_uids, eval_images = eval_table["uid"].to_pylist(), set(eval_table["image"].to_pylist())
    expected = {}
    for uid, data, row in zip(table["uid"].to_pylist(), table["image"].to_pylist(), near):
        scores = [inliers(keypoints(data), eval_packed[j]) for j in row]
        if max(scores) >= 12 and data not in eval_images:
            expected[uid] = eval_uids[row[int(np.argmax(scores))]]
    assert {u: v for u, (r, v) in got.items() if r == "eval_near"} == expected
    found = sum(got.get(uid) == ("eval_near", eval_uid) for uid, _, eval_uid in planted)
    assert found >= 0.7 * len(planted), (found, len(planted))  # a mixed copy with a word can fail verification
