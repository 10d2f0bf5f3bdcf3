"""Pipeline files: validation before work, errors with file and key path, overrides."""

from pathlib import Path

import pytest

from curate.engines.runnable import RunPipeline, RunSettings, StageEntry
from curate.pipeline import ConfigError, load_pipeline
from curate.stages import REGISTRY

RECIPES = Path(__file__).parents[1] / "pipelines"


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


GOOD = """
name: t
input: in
output: out
stages:
  - stage: decode
  - stage: language
  - stage: caption
    min_words: 3
"""


def test_good_file_gives_typed_configs(tmp_path):
    pipeline = load_pipeline(write(tmp_path, GOOD))
    assert [s.name for s in pipeline.stages] == ["decode", "language", "caption"]
    assert pipeline.stages[2].config.min_words == 3
    assert pipeline.stages[1].config.languages == ["en"]


def test_a_pipeline_is_what_the_engines_run(tmp_path):
    """The engines take a pipeline by the protocol of what they read (curate.engines.runnable)."""
    pipeline = load_pipeline(write(tmp_path, GOOD))
    assert isinstance(pipeline, RunPipeline) and isinstance(pipeline.settings, RunSettings)
    assert all(isinstance(entry, StageEntry) for entry in pipeline.stages)
    assert not isinstance(pipeline.settings, RunPipeline)  # the check has teeth: settings build no stages


def test_wrong_type_names_file_and_key_path(tmp_path):
    path = write(tmp_path, GOOD.replace("min_words: 3", "min_words: three"))
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    message = str(err.value)
    assert str(path) in message and "stages[2].min_words" in message and "integer" in message


def test_unknown_parameter_and_unknown_stage(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\[2\]\.min_wrods.*Extra inputs"):
        load_pipeline(write(tmp_path, GOOD.replace("min_words", "min_wrods")))
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path, GOOD.replace("stage: language", "stage: langauge")))
    assert "stages[1].stage: unknown stage 'langauge'" in str(err.value)
    assert all(name in str(err.value) for name in REGISTRY)


def test_structural_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="stages: expected a non-empty list"):
        load_pipeline(write(tmp_path, "name: t\nstages: decode\n"))
    with pytest.raises(ConfigError, match=r"stages\[0\]: expected a mapping with a 'stage' key"):
        load_pipeline(write(tmp_path, "name: t\nstages:\n  - decode\n"))
    with pytest.raises(ConfigError, match="batch_size"):
        load_pipeline(write(tmp_path, GOOD + "batch_size: -4\n"))
    with pytest.raises(ConfigError, match="name"):
        load_pipeline(write(tmp_path, "stages:\n  - stage: decode\n"))


def test_overrides(tmp_path):
    path = write(tmp_path, GOOD)
    pipeline = load_pipeline(path, ["stages[2].min_words=5", "output=elsewhere", "stages[1].languages=[en, de]"])
    assert pipeline.stages[2].config.min_words == 5
    assert pipeline.settings.output == "elsewhere"
    assert pipeline.stages[1].config.languages == ["en", "de"]
    with pytest.raises(ConfigError, match=r"has no key 'stages\[9\]\.min_words'"):
        load_pipeline(path, ["stages[9].min_words=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_pipeline(path, ["stages[1]"])
    with pytest.raises(ConfigError, match=r"stages\[2\]\.min_words"):
        load_pipeline(path, ["stages[2].min_words=many"])


def test_column_check_names_stage_and_fix(tmp_path):
    pipeline = load_pipeline(write(tmp_path, "name: t\nstages:\n  - stage: image_size\n    min_side: 10\n"))
    with pytest.raises(ConfigError) as err:
        pipeline.check_columns(["uid", "text", "image"])
    assert "stages[0] (image_size)" in str(err.value) and "decode" in str(err.value)
    assert "['original_width', 'original_height'] (the input must hold them)" in str(err.value)
    pipeline.check_columns(["uid", "text", "original_width", "original_height"])  # a metadata input


def test_metadata_input_fails_where_a_stage_needs_images(tmp_path):
    pipeline = load_pipeline(write(tmp_path, GOOD))
    metadata = ["uid", "url", "text", "original_width", "original_height"]
    with pytest.raises(ConfigError) as err:
        pipeline.check_columns(metadata)
    assert str(err.value).startswith(f"{tmp_path / 'p.yaml'}: stages[0] (decode) needs image bytes")
    downloaded = load_pipeline(write(tmp_path, GOOD.replace("  - stage: decode",
                                                            "  - stage: download\n  - stage: decode")))
    downloaded.check_columns(metadata)  # a URL list, downloaded first


def test_unknown_input_is_taken_to_hold_the_columns_no_stage_writes(tmp_path):
    """Without an input (`curate validate` with no --input) a column only the input can hold is assumed;
    one that a stage writes must come from an earlier stage."""
    load_pipeline(RECIPES / "datacomp_basic_metadata.yaml").check_columns()
    with pytest.raises(ConfigError, match=r"stages\[0\] \(concept_balance\) reads column\(s\) \['concepts'\]"):
        load_pipeline(write(tmp_path, "name: t\nstages:\n  - stage: concept_balance\n    metadata: m.parquet\n"
                                      "    t: 5\n  - stage: concept_match\n    metadata: m.parquet\n")).check_columns()


@pytest.mark.parametrize("recipe", ["quickstart", "datacomp_basic", "laion_filter", "clip_score", "no_filter",
                                    "datacomp_pool"])
def test_shipped_recipes_validate(recipe):
    pipeline = load_pipeline(RECIPES / f"{recipe}.yaml")
    pipeline.check_columns(["uid", "text", "image"])


def test_metadata_recipe_is_datacomp_basic_without_decode():
    images = load_pipeline(RECIPES / "datacomp_basic.yaml")
    metadata = load_pipeline(RECIPES / "datacomp_basic_metadata.yaml")
    assert [s for s in images.stages if s.name != "decode"] == metadata.stages
    metadata.check_columns(["uid", "url", "text", "original_width", "original_height"])


def test_datacomp_basic_recipe_matches_the_paper():
    stages = {s.name: s.config for s in load_pipeline(RECIPES / "datacomp_basic.yaml").stages}
    assert stages["language"].languages == ["en"]
    assert (stages["caption"].min_words, stages["caption"].min_chars) == (3, 6)
    assert (stages["image_size"].min_side, stages["image_size"].max_aspect_ratio) == (200, 3)


def test_datacomp_pool_recipe_runs_dataComps_steps_in_order(tmp_path, pool_table, pool_root):
    """NSFW removal, then evaluation-set deduplication, then face blurring, as DataComp built its pool:
    an eval image is rejected by decontaminate, a photograph's face is blurred, drawings pass."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import skimage.data
    from PIL import Image

    from curate.engines import LocalEngine
    from curate.runner import run_pipeline

    pipeline = load_pipeline(RECIPES / "datacomp_pool.yaml", [f"stages[2].eval_data=[{pool_root / 'eval'}]"])
    assert [s.name for s in pipeline.stages] == ["decode", "nsfw", "decontaminate", "face_blur"]
    photo = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(photo, format="JPEG", quality=90)
    eval_image = pq.read_table(next((pool_root / "eval").glob("*.parquet"))).column("image")[0].as_py()
    rows = pool_table.select(["uid", "text", "image"]).slice(0, 12).to_pylist() + [
        {"uid": "f" * 32, "text": "an astronaut", "image": photo.getvalue()},
        {"uid": "e" * 32, "text": "an evaluation drawing", "image": eval_image}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "input.parquet")
    stats = run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(tmp_path / "input.parquet")],
                         tmp_path / "out")
    ledger = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pylist()
    assert [(r["uid"], r["stage"], r["reason"]) for r in ledger] == [("e" * 32, "decontaminate", "eval_exact")]
    kept = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "out" / "parquet").glob("*.parquet")))
    astronaut = kept.filter(pa.compute.equal(kept.column("uid"), "f" * 32)).to_pylist()[0]
    assert len(astronaut["face_bboxes"]) == 1 and astronaut["image"] != photo.getvalue()
    assert astronaut["nsfw_score"] <= 0.5
    assert stats["kept"] == len(rows) - 1
    report = (tmp_path / "out" / "report.html").read_text()
    faces = sum(len(b) > 0 for b in kept.column("face_bboxes").to_pylist())
    assert f"{faces:,} kept images have faces" in report and "NSFW scores" in report


def test_outputs_default_to_all_and_are_validated(tmp_path):
    assert load_pipeline(write(tmp_path, GOOD)).settings.outputs == ["parquet", "webdataset", "uids"]
    assert load_pipeline(write(tmp_path, GOOD + "outputs: [parquet, uids]\n")).settings.outputs == ["parquet", "uids"]
    path = write(tmp_path, GOOD + "outputs: [parquet, tar]\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert str(err.value) == f"{path}: outputs[1]: Input should be 'parquet', 'webdataset' or 'uids' (got 'tar')"
    with pytest.raises(ConfigError, match=r"outputs: .*must include parquet.*\[parquet, uids\] for a metadata run"):
        load_pipeline(write(tmp_path, GOOD + "outputs: [webdataset, uids]\n"))
    with pytest.raises(ConfigError, match="outputs: .*names an output more than once"):
        load_pipeline(write(tmp_path, GOOD + "outputs: [parquet, uids, uids]\n"))
    assert load_pipeline(write(tmp_path, GOOD), ["outputs=[parquet]"]).settings.outputs == ["parquet"]
