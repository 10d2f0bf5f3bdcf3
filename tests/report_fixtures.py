"""A finished run the report, sample and inspect tests share: the real test pool plus one row per
image fault, an empty caption and an exact duplicate pair, through decode, caption, language,
image_size, exact_dedup, near_dedup and clip_score on a seeded score column (so the ledger holds
read, decode, filter, duplicate and score reasons), on the local engine, in several tasks."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

RUN_PIPELINE = """
name: report_run
stages:
  - stage: decode
  - stage: caption
    min_words: 2
  - stage: language
    languages: [en]
  - stage: image_size
    min_side: 64
    max_aspect_ratio: 3
  - stage: exact_dedup
    key: image
  - stage: near_dedup
    radius: 4
  - stage: clip_score
    score_column: clip_l14_similarity_score
    threshold: 0.2
"""


@pytest.fixture(scope="session")
def report_input(tmp_path_factory, pool_table, fault_images) -> Path:
    """The pool (4 row groups of 40) and a file of faults: every decode fault, an empty caption, a
    duplicate pair of the pool's largest image."""
    folder = tmp_path_factory.mktemp("report_input")
    faults = [{"uid": f"{i:032x}", "url": f"http://example.test/{reason}", "text": f"a drawing with a {reason} fault",
               "image": data} for i, (reason, data) in enumerate(fault_images.items(), start=1)]
    faults.append({"uid": f"{99:032x}", "url": "http://example.test/blank", "text": "   ",
                   "image": pool_table.column("image")[1].as_py()})
    biggest = max(pool_table.column("image").to_pylist(), key=len)
    faults += [{"uid": f"{k:032x}", "url": f"http://example.test/copy{k}", "text": "a colourful drawing of a cat",
                "image": biggest} for k in (100, 101)]
    # a seeded tenth scores under clip_score's 0.2 (this seed spares the kept sides of the duplicate
    # pairs, which test_inspection shows beside their rejected copies as kept)
    rng = np.random.default_rng(0)
    rows = pool_table.num_rows + len(faults)
    low = rng.random(rows) < 0.1
    scores = np.where(low, rng.uniform(0.1, 0.2, rows), rng.uniform(0.25, 0.4, rows)).astype(np.float32)
    base = pool_table.select(["uid", "url", "text", "image"])
    base = base.append_column("clip_l14_similarity_score", pa.array(scores[:base.num_rows]))
    pq.write_table(base, folder / "a.parquet", row_group_size=40)
    for fault, score in zip(faults, scores[base.num_rows:]):
        fault["clip_l14_similarity_score"] = float(score)
    pq.write_table(pa.Table.from_pylist(faults, schema=base.schema), folder / "b.parquet")
    return folder


@pytest.fixture(scope="session")
def report_run(tmp_path_factory, report_input) -> tuple[Path, dict]:
    """The finished run's output folder and stats."""
    import yaml

    from curate.engines import LocalEngine
    from curate.pipeline import parse_pipeline
    from curate.runner import run_pipeline

    out = tmp_path_factory.mktemp("report_run") / "out"
    pipeline = parse_pipeline(yaml.safe_load(RUN_PIPELINE), "report_run.yaml")
    stats = run_pipeline(pipeline, LocalEngine(1, progress=False), str(report_input), out)
    return out, stats
