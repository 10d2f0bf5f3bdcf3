"""The pool builder on real openclipart drawings."""

import io
import shutil

import pyarrow.parquet as pq
from PIL import Image

from curate.sample.openclipart import DEFAULT_SOURCE, build_pool, read_metadata, split_of


def test_metadata_is_read_as_found():
    svg = DEFAULT_SOURCE / "science" / "provetta_plasma_sangue_a_01.svg"
    meta = read_metadata(svg)
    assert meta["title"] == "Provetta plasma sangue"  # Italian, as the artist wrote it
    assert meta["description"] == "" and meta["keywords"] == ["unsorted"] and meta["source_language"] == "en"


def test_build_counts_failures_keeps_categories_and_splits_by_hash(tmp_path):
    source = tmp_path / "svg"
    svgs = sorted(DEFAULT_SOURCE.rglob("*.svg"))[:12]
    for i, svg in enumerate(svgs):
        folder = source / ("animals" if i % 2 else "food")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(svg, folder / f"{i:02d}_{svg.name}")
    (source / "food" / "broken.svg").write_text("<svg><unclosed")
    (source / "animals" / "linked.svg").symlink_to(next((source / "food").glob("00_*.svg")))  # as in the package
    summary = build_pool(tmp_path / "out", source, workers=2, eval_percent=30, progress=False)
    assert summary["failed"] == 1 and summary["failures"][0]["path"].endswith("broken.svg")
    assert summary["rendered"] == summary["pool"] + summary["eval"]
    uids = [r["uid"] for split in ("pool", "eval") for r in pq.read_table(tmp_path / "out" / split).to_pylist()]
    assert len(set(uids)) == len(uids) == summary["rendered"]  # the symlinked copy is a sample of its own
    rows = {split: pq.read_table(tmp_path / "out" / split).to_pylist() for split in ("pool", "eval")}
    for split, split_rows in rows.items():
        for row in split_rows:
            relative = row["url"].split("/svg/", 1)[1]
            assert split_of(relative, 30) == split
            assert row["category"] == relative.split("/")[0]
            image = Image.open(io.BytesIO(row["image"]))
            assert image.format == "JPEG" and max(image.size) <= 512
    again = build_pool(tmp_path / "again", source, workers=1, eval_percent=30, progress=False)
    assert {k: again[k] for k in ("pool", "eval", "failed")} == {k: summary[k] for k in ("pool", "eval", "failed")}
    assert pq.read_table(tmp_path / "again" / "pool")["uid"].to_pylist() == [r["uid"] for r in rows["pool"]]
