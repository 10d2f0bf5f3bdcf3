"""Decontamination: planted evaluation images leave a pool, by exact bytes and by pHash."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curate.stages.decontaminate import Decontaminate, DecontaminateConfig
from curate.stages.near_dedup import phash


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
