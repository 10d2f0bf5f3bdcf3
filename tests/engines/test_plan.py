"""The pass plan: passes without map stages whose global stage's process is cheap store no output,
and the passes after them replay them; a run is the same as the rules computed by brute force."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curate.engines.local import LocalEngine
from curate.engines.plan import plan_passes
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline

SCORE = "clip_l14_similarity_score"


def stages_of(tmp_path, stages: list[dict]):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "plan", "stages": stages}))
    return load_pipeline(path).build_stages()


def test_a_middle_pass_without_map_stages_and_a_cheap_process_is_not_stored(tmp_path):
    stages = stages_of(tmp_path, [
        {"stage": "caption", "min_words": 1},
        {"stage": "exact_dedup", "key": "url_text"},
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5},
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5},
        {"stage": "caption", "min_words": 2},
    ])
    first, dedup_applied, top_applied, last = plan_passes(stages)
    assert first.stored and last.stored  # the input is read once; the run's output is written
    assert not dedup_applied.stored and not top_applied.stored
    assert top_applied.replays == (dedup_applied,) and top_applied.source == 0
    assert last.replays == (dedup_applied, top_applied) and last.source == 0


def test_a_pass_with_map_stages_or_a_costly_process_is_stored(tmp_path):
    stages = stages_of(tmp_path, [
        {"stage": "exact_dedup", "key": "url_text"},
        {"stage": "caption", "min_words": 1},  # a map stage between the global stages
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5},
        {"stage": "near_dedup"},  # hashes images in its process
        {"stage": "caption", "min_words": 2},
    ])
    passes = plan_passes(stages)
    assert [p.stored for p in passes] == [True, True, True, True]
    assert all(not p.replays and p.source == p.index - 1 for p in passes)


def _expected(table: pa.Table) -> set[str]:
    """exact_dedup (url, text: the smallest uid wins), then a row without a score is rejected and the
    top half by score is kept (ceil(n / 2)-th best and ties), twice: by brute force in Python."""
    left = [r for r in _deduplicated(table) if not _unscored(r)]
    for _ in range(2):
        scores = sorted((np.float32(r[SCORE]) for r in left), reverse=True)
        threshold = scores[math.ceil(len(scores) / 2) - 1]
        left = [r for r in left if np.float32(r[SCORE]) >= threshold]
    return {r["uid"] for r in left}


@pytest.mark.parametrize("workers", [1, 2])
def test_unstored_passes_give_the_rules_result(tmp_path, workers):
    """3,000 metadata rows in 6 tasks (pairs repeated across tasks, missing scores): dedup and two
    top halves through two unstored passes keep what the rules say, with every row accounted for."""
    rng = np.random.default_rng(7)
    n = 3000
    pair = rng.integers(0, 2200, n)  # about a quarter of the rows repeat an earlier pair
    scores = rng.random(n).astype(np.float32).round(3)  # rounded: ties at the thresholds
    missing = rng.random(n) < 0.05
    table = pa.table({"uid": [f"u{i:05d}" for i in rng.permutation(n)], "url": [f"http://x/{p}" for p in pair],
                      "text": [f"caption {p}" for p in pair],
                      SCORE: pa.array(np.where(missing, np.nan, scores), pa.float32(), mask=missing & (pair % 2 == 0))})
    source = tmp_path / "in"
    source.mkdir()
    pq.write_table(table, source / "meta.parquet", row_group_size=500)
    pipeline_file = tmp_path / "p.yaml"
    pipeline_file.write_text(yaml.safe_dump({"name": "plan", "outputs": ["parquet"], "stages": [
        {"stage": "exact_dedup", "key": "url_text"},
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5},
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5}]}))
    stats = run_pipeline(load_pipeline(pipeline_file), LocalEngine(workers=workers, progress=False), str(source),
                         tmp_path / "out")
    kept = pq.read_table(tmp_path / "out" / "parquet").column("uid").to_pylist()
    assert len(kept) == len(set(kept)) and set(kept) == _expected(table)
    ledger = pq.read_table(tmp_path / "out" / "rejected.parquet")
    assert ledger.num_rows + len(kept) == n == stats["input"]
    assert set(ledger.column("uid").to_pylist()) | set(kept) == set(table.column("uid").to_pylist())
    reasons = {s["key"]: s["reasons"] for s in stats["stages"]}
    assert reasons["1:clip_score:fit"] == {"unscorable_image": sum(map(_unscored, _deduplicated(table)))}


def _deduplicated(table: pa.Table) -> list[dict]:
    """The rows exact_dedup keeps: per (url, text), the smallest uid."""
    rows = table.to_pylist()
    winners: dict[tuple, str] = {}
    for row in rows:
        winners[row["url"], row["text"]] = min(winners.get((row["url"], row["text"]), row["uid"]), row["uid"])
    return [r for r in rows if winners[r["url"], r["text"]] == r["uid"]]


def _unscored(row: dict) -> bool:
    return row[SCORE] is None or math.isnan(row[SCORE])
