"""Parity: the same pipelines on the same input give the same output on local, Ray and Spark, with
global stages fitted through each engine's own shuffle over many small partitions."""

import json
import os
import sys

import pytest

from curate.engines import LocalEngine, RayEngine, SparkEngine
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from curate.stages import REGISTRY
from tests.engines.helpers import assert_same_output, read_output

EMBEDDING = {"checkpoint": "EMBEDDER", "store": "STORE"}  # each run fills its own store
PIPELINES = {
    "filters_and_dedup": [
        {"stage": "decode"}, {"stage": "caption", "min_words": 2}, {"stage": "language", "languages": ["en"]},
        {"stage": "image_size", "min_side": 32}, {"stage": "exact_dedup"}, {"stage": "near_dedup", "radius": 4},
        {"stage": "file_size", "min_bytes": 2000},
    ],
    "rewrite": [
        {"stage": "decode"}, {"stage": "text_filter", "patterns": ["^a drawing"], "blocklist": ["flag"]},
        {"stage": "resize", "image_size": 64, "resize_mode": "center_crop"},
        {"stage": "exact_dedup", "key": "url_text"}, {"stage": "exact_dedup", "key": "image_text"},
    ],
    "download": [{"stage": "download", "timeout": 1.0}, {"stage": "decode"}, {"stage": "caption", "min_words": 1}],
    "datacomp_rules": [  # DataComp's own counting, gcld3, the text-based synsets and the fraction rule
        {"stage": "decode"}, {"stage": "caption", "min_words": 2, "min_chars": 6, "chars": "raw", "words": "fasttext"},
        {"stage": "language", "backend": "gcld3", "line": "newlines", "languages": ["en", "de"]},
        {"stage": "synset_filter"},
        {"stage": "clip_score", "checkpoint": "CHECKPOINT", "top_fraction": 0.5, "fraction_rule": "datacomp"}],
    "decontaminate": [{"stage": "decode"}, {"stage": "decontaminate", "eval_data": ["EVAL_SPLIT"], "radius": 4}],
    "clip_score": [{"stage": "decode"}, {"stage": "language", "languages": None},
                   {"stage": "clip_score", "checkpoint": "CHECKPOINT", "top_fraction": 0.5},
                   {"stage": "clip_score", "checkpoint": "CHECKPOINT", "thresholds": {"en": -0.05, "default": 0.0}}],
    "concepts": [{"stage": "concept_match", "metadata": "METADATA"},
                 {"stage": "concept_balance", "metadata": "METADATA", "t": 2},
                 {"stage": "concept_balance", "metadata": "METADATA", "target_size": 40, "unmatched": "keep",
                  "seed": 3}],
    "capfilt": [{"stage": "decode"}, {"stage": "caption", "min_words": 5},
                {"stage": "recaption", "checkpoint": "CAPTIONER", "num_captions": 2, "max_new_tokens": 6},
                {"stage": "caption_filter", "checkpoint": "CHECKPOINT", "top_n": 2, "policy": "separate"}],
    # NudeNet's clothed and face classes too, so the drawings give scores on both sides of the threshold
    "safety": [{"stage": "decode"}, {"stage": "pii", "mode": "reject", "types": ["ADDRESS", "PHONE"]},
               {"stage": "pii", "mode": "redact"},
               {"stage": "nsfw", "threshold": 0.3,
                "classes": ["FEET_COVERED", "FACE_FEMALE", "FACE_MALE", "BELLY_COVERED", "FEMALE_BREAST_COVERED",
                            "BUTTOCKS_COVERED", "ARMPITS_EXPOSED"]},
               {"stage": "face_blur", "min_confidence": 0.25}, {"stage": "face_blur", "blur": False}],
    "embeddings": [{"stage": "decode"}, {"stage": "embed", **EMBEDDING},
                   {"stage": "clip_score", "top_fraction": 0.8, **EMBEDDING},
                   {"stage": "decontaminate_embedding", "eval_data": ["EVAL_SPLIT"], "threshold": 0.995, **EMBEDDING},
                   {"stage": "embed_dedup", "threshold": 0.99, **EMBEDDING},
                   {"stage": "semdedup", "clusters": 4, "epsilon": 0.003, **EMBEDDING},
                   {"stage": "image_based_filter", "target": ["EVAL_SPLIT"], "clusters": 6, **EMBEDDING}],
}
DOWNLOAD_PATHS = ["/img/0.jpg", "/img/1.jpg", "/img/2.jpg", "/img/3.jpg", "/missing.jpg", "/page.jpg", "/loop.jpg",
                  "/truncated.jpg", "/huge.jpg"]
PARTITION_ROWS = 8
ENGINES = {
    "ray": lambda: RayEngine(workers=2, progress=False),
    "spark": lambda: SparkEngine(workers=2, progress=False),
}


@pytest.fixture(scope="module")
def shared_sessions():
    """One local Ray and one Spark session for all parity runs (the engines join them)."""
    import ray
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    yield
    spark.stop()
    ray.shutdown()


def test_parity_pipelines_cover_every_registered_stage():
    covered = {stage["stage"] for stages in PIPELINES.values() for stage in stages}
    assert covered == set(REGISTRY), f"add {set(REGISTRY) - covered} to the parity pipelines"


@pytest.mark.distributed
@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_engine_matches_local(engine, name, faulty_input, image_server, pool_root, clip_checkpoint, concept_metadata,
                              llava_checkpoint, embedding_checkpoint, tmp_path, shared_sessions):
    text = json.dumps(PIPELINES[name]).replace("EVAL_SPLIT", str(pool_root / "eval"))
    text = (text.replace("CHECKPOINT", str(clip_checkpoint)).replace("METADATA", str(concept_metadata))
            .replace("CAPTIONER", str(llava_checkpoint)).replace("EMBEDDER", str(embedding_checkpoint)))

    def pipeline(run: str):
        stages = json.loads(text.replace("STORE", str(tmp_path / f"store-{run}")))
        # small shuffle partitions: every global stage's fit shuffles ~20 partitions over the workers
        return parse_pipeline({"name": name, "batch_size": 16, "partition_rows": PARTITION_ROWS, "stages": stages},
                              f"<{name}>")

    source = faulty_input
    if name == "download":
        source = tmp_path / "urls.jsonl"
        source.write_text("".join(json.dumps({"url": image_server + p, "caption": f"drawing {i}"}) + "\n"
                                  for i, p in enumerate(DOWNLOAD_PATHS)))
    run_pipeline(pipeline("local"), LocalEngine(workers=1, progress=False), [str(source)], tmp_path / "local")
    stats = run_pipeline(pipeline(engine), ENGINES[engine](), [str(source)], tmp_path / engine)
    assert stats["engine"] == engine
    local, other = read_output(tmp_path / "local"), read_output(tmp_path / engine)
    assert other["kept"] and other["ledger"]
    assert_same_output(other, local)  # same kept rows and values (floats within 1e-5), ledger, stats, parts
