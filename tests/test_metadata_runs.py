"""Metadata runs: a DataComp-style Parquet of uid, url, text and original sizes, without image bytes."""

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from curate.cli import main
from curate.config import ConfigError
from curate.engines import LocalEngine
from curate.pipeline import load_pipeline, parse_pipeline
from curate.runner import run_pipeline
from tests.engines.helpers import read_output

RECIPES = Path(__file__).parents[1] / "pipelines"


@pytest.fixture()
def pool_inputs(tmp_path, pool_table) -> tuple[Path, Path]:
    """(a) the pool's images as a Parquet and (b) the same samples as DataComp metadata: uid, url,
    text and original_width/original_height equal to the images' decoded sizes, no image column."""
    images = pool_table.select(["uid", "url", "text", "image"])
    sizes = [Image.open(io.BytesIO(data)).size for data in images.column("image").to_pylist()]
    metadata = images.drop_columns(["image"]).append_column(
        "original_width", pa.array([w for w, _ in sizes], pa.int64())).append_column(
        "original_height", pa.array([h for _, h in sizes], pa.int64()))
    pq.write_table(images, tmp_path / "images.parquet", row_group_size=40)
    pq.write_table(metadata, tmp_path / "metadata.parquet", row_group_size=40)
    return tmp_path / "images.parquet", tmp_path / "metadata.parquet"


def _accounted(out: dict, uids: list[str]) -> set[str]:
    """The kept uids, once every input uid is checked to be kept or in the ledger, exactly once."""
    kept = [r["uid"] for r in out["kept"]]
    rejected = [r["uid"] for r in out["ledger"]]
    assert sorted(kept + rejected) == sorted(uids)
    assert out["stats"]["kept"] + out["stats"]["rejected"] == out["stats"]["input"] == len(uids)
    return set(kept)


def test_datacomp_basic_on_metadata_keeps_what_the_image_run_keeps(tmp_path, pool_table, pool_inputs):
    images, metadata = pool_inputs
    engine = LocalEngine(workers=2, progress=False)
    run_pipeline(load_pipeline(RECIPES / "datacomp_basic.yaml"), engine, [str(images)], tmp_path / "a")
    run_pipeline(load_pipeline(RECIPES / "datacomp_basic_metadata.yaml"), engine, [str(metadata)], tmp_path / "b")
    with_images, from_metadata = read_output(tmp_path / "a"), read_output(tmp_path / "b")
    uids = pool_table.column("uid").to_pylist()
    kept = _accounted(with_images, uids)
    assert _accounted(from_metadata, uids) == kept
    assert 0 < len(kept) < len(uids)
    # the same samples go for the same reasons; the size rules really ran on the original sizes
    assert sorted(map(tuple, (r.values() for r in from_metadata["ledger"]))) == \
        sorted(map(tuple, (r.values() for r in with_images["ledger"])))
    size_reasons = {r["reason"] for r in from_metadata["ledger"] if r["stage"] == "image_size"}
    assert size_reasons & {"image_too_small", "aspect_ratio"}
    assert [s["name"] for s in from_metadata["stats"]["stages"]] == ["read", "caption", "language", "image_size"]


def test_pixel_stage_on_metadata_fails_at_validation(tmp_path, pool_inputs):
    _, metadata = pool_inputs
    recipe = RECIPES / "datacomp_basic.yaml"
    result = CliRunner().invoke(main, ["validate", str(recipe), "--input", str(metadata)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    for part in (str(recipe), "stages[0] (decode)", "needs image bytes", "'download' stage", "input with images",
                 "remove the stage", "original_width"):
        assert part in result.output, part
    ok = CliRunner().invoke(main, ["validate", str(RECIPES / "datacomp_basic_metadata.yaml"), "--input", str(metadata)])
    assert ok.exit_code == 0 and "caption -> language -> image_size" in ok.output and str(metadata) in ok.output
    # `curate run` stops before any work: no output folder is made
    with pytest.raises(ConfigError, match=r"stages\[0\] \(decode\) needs image bytes"):
        run_pipeline(load_pipeline(recipe), LocalEngine(workers=1, progress=False), [str(metadata)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _stages(*stages: dict):
    return parse_pipeline({"name": "t", "stages": [{"stage": "caption"}, *stages]}, "t.yaml")


@pytest.mark.parametrize("stage, fix", [
    ({"stage": "near_dedup"}, None),
    ({"stage": "file_size", "min_bytes": 10}, None),
    ({"stage": "exact_dedup"}, "key: url_text"),
    ({"stage": "exact_dedup", "key": "image_text"}, "key: url_text"),
])
def test_a_later_pixel_stage_is_named_with_its_fix(tmp_path, pool_inputs, stage, fix):
    _, metadata = pool_inputs
    with pytest.raises(ConfigError) as err:
        run_pipeline(_stages(stage), LocalEngine(workers=1, progress=False), [str(metadata)], tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"t.yaml: stages[1] ({stage['stage']}) needs image bytes")
    assert fix is None or fix in message
    assert not (tmp_path / "out").exists()


def test_exact_dedup_on_url_text_runs_on_metadata(tmp_path, pool_table, pool_inputs):
    _, metadata = pool_inputs
    originals = pq.read_table(metadata).slice(0, 3)
    copies = [f"{i:032x}" for i in range(3)]  # the same url and text under uids that sort first: they win
    pq.write_table(originals.set_column(0, "uid", pa.array(copies)), tmp_path / "copies.parquet")
    pipeline = _stages({"stage": "exact_dedup", "key": "url_text"})
    run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(metadata), str(tmp_path / "copies.parquet")],
                 tmp_path / "out")
    out = read_output(tmp_path / "out")
    kept = _accounted(out, pool_table.column("uid").to_pylist() + copies)
    assert {r["uid"]: r["value"] for r in out["ledger"] if r["reason"] == "duplicate"} == \
        dict(zip(originals.column("uid").to_pylist(), copies))
    assert set(copies) <= kept


def test_image_size_without_any_size_is_a_validation_error(tmp_path, pool_inputs):
    _, metadata = pool_inputs
    bare = pq.read_table(metadata).drop_columns(["original_width", "original_height"])
    pq.write_table(bare, tmp_path / "bare.parquet")
    result = CliRunner().invoke(main, ["validate", str(RECIPES / "datacomp_basic_metadata.yaml"),
                                       "--input", str(tmp_path / "bare.parquet")])
    assert result.exit_code == 2
    for part in ("stages[2] (image_size)", "['width', 'height']", "decode", "['original_width', 'original_height']"):
        assert part in result.output, part


def test_metadata_with_a_download_stage_downloads(tmp_path, image_server):
    urls = [f"{image_server}/img/{i}.jpg" for i in range(3)] + [f"{image_server}/missing.jpg"]
    table = pa.table({"url": urls, "caption": [f"drawing number {i}" for i in range(4)]})
    pq.write_table(table, tmp_path / "urls.parquet")
    pipeline = parse_pipeline({"name": "t", "stages": [{"stage": "download", "timeout": 5}, {"stage": "decode"},
                                                       {"stage": "image_size", "min_side": 1}]}, "t.yaml")
    result = CliRunner().invoke(main, ["validate", str(RECIPES / "datacomp_basic.yaml"),
                                       "--input", str(tmp_path / "urls.parquet")])
    assert result.exit_code == 2 and "stages[0] (decode)" in result.output
    stats = run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(tmp_path / "urls.parquet")],
                         tmp_path / "out")
    out = read_output(tmp_path / "out")
    assert (stats["kept"], stats["rejected"]) == (3, 1)
    assert all(r["width"] > 0 and r["image"] for r in out["kept"])
    assert [(r["stage"], r["reason"]) for r in out["ledger"]] == [("download", "http_error")]
