"""The pass plan: middle passes whose map stages and global stage's process are cheap store no
output, and the passes after them replay them; a run is the same as the rules computed by brute force."""

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


def test_middle_passes_of_cheap_steps_are_not_stored(tmp_path):
    stages = stages_of(tmp_path, [
        {"stage": "image_size", "min_side": 10},
        {"stage": "exact_dedup", "key": "url_text"},
        {"stage": "image_size", "min_side": 20},
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5},
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5},
        {"stage": "caption", "min_words": 2},
    ])
    first, dedup_applied, top_applied, last = plan_passes(stages)
    assert first.stored and last.stored  # the input is read once; the run's output is written
    assert not dedup_applied.stored and not top_applied.stored
    assert top_applied.replays == (dedup_applied,) and top_applied.source == 0
    assert last.replays == (dedup_applied, top_applied) and last.source == 0


def test_a_pass_with_a_costly_map_stage_or_process_is_stored(tmp_path):
    stages = stages_of(tmp_path, [
        {"stage": "language", "languages": ["en"]},  # fastText on every caption
        {"stage": "exact_dedup", "key": "url_text"},
        {"stage": "caption", "min_words": 1},  # a map stage that costs more than reading its rows back
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5},
        {"stage": "near_dedup"},  # hashes images in its process
        {"stage": "caption", "min_words": 2},
    ])
    passes = plan_passes(stages)
    assert [p.stored for p in passes] == [True, True, True, True]
    assert all(not p.replays and p.source == p.index - 1 for p in passes)


def _expected(table: pa.Table) -> set[str]:
    """The caption rule (two words), exact_dedup (url, text: the smallest uid wins), the size rule (a
    side of 10 px at least), then a row without a score is rejected and the top half by score is kept
    (ceil(n / 2)-th best and ties), twice: by brute force in Python."""
    left = [r for r in _sized(_deduplicated(table)) if not _unscored(r)]
    for _ in range(2):
        scores = sorted((np.float32(r[SCORE]) for r in left), reverse=True)
        threshold = scores[math.ceil(len(scores) / 2) - 1]
        left = [r for r in left if np.float32(r[SCORE]) >= threshold]
    return {r["uid"] for r in left}


@pytest.mark.parametrize("workers", [1, 2])
def test_unstored_passes_give_the_rules_result(tmp_path, workers):
    """3,000 metadata rows in 6 tasks (pairs repeated across tasks, missing scores, one-word captions,
    small sizes): a caption rule, dedup, then a size rule and two top halves through two unstored
    passes keep what the rules say, with every row accounted for."""
    rng = np.random.default_rng(7)
    n = 3000
    pair = rng.integers(0, 2200, n)  # about a quarter of the rows repeat an earlier pair
    scores = rng.random(n).astype(np.float32).round(3)  # rounded: ties at the thresholds
    missing = rng.random(n) < 0.05
    table = pa.table({"uid": [f"u{i:05d}" for i in rng.permutation(n)], "url": [f"http://x/{p}" for p in pair],
                      "text": [f"caption {p}" if p % 11 else f"word{p}" for p in pair],
                      "original_width": rng.integers(5, 60, n), "original_height": rng.integers(5, 60, n),
                      SCORE: pa.array(np.where(missing, np.nan, scores), pa.float32(), mask=missing & (pair % 2 == 0))})
    source = tmp_path / "in"
    source.mkdir()
    pq.write_table(table, source / "meta.parquet", row_group_size=500)
    pipeline_file = tmp_path / "p.yaml"
    pipeline_file.write_text(yaml.safe_dump({"name": "plan", "outputs": ["parquet"], "stages": [
        {"stage": "caption", "min_words": 2},
        {"stage": "exact_dedup", "key": "url_text"},
        {"stage": "image_size", "min_side": 10},
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5},
        {"stage": "clip_score", "score_column": SCORE, "top_fraction": 0.5}]}))
    assert [p.stored for p in plan_passes(load_pipeline(pipeline_file).build_stages())] == [True, False, False, True]
    stats = run_pipeline(load_pipeline(pipeline_file), LocalEngine(workers=workers, progress=False), str(source),
                         tmp_path / "out")
    kept = pq.read_table(tmp_path / "out" / "parquet").column("uid").to_pylist()
    assert len(kept) == len(set(kept)) and set(kept) == _expected(table)
    ledger = pq.read_table(tmp_path / "out" / "rejected.parquet")
    assert ledger.num_rows + len(kept) == n == stats["input"]
    assert set(ledger.column("uid").to_pylist()) | set(kept) == set(table.column("uid").to_pylist())
    reasons = {s["key"]: s["reasons"] for s in stats["stages"]}
    assert reasons["3:clip_score:fit"] == {"unscorable_image": sum(map(_unscored, _sized(_deduplicated(table))))}
    assert sum(reasons["2:image_size"].values()) == len(_deduplicated(table)) - len(_sized(_deduplicated(table))) > 0
    assert reasons["0:caption"] == {"too_few_words": sum(1 for t in table.column("text").to_pylist() if " " not in t)}


def _deduplicated(table: pa.Table) -> list[dict]:
    """The rows the caption rule and then exact_dedup keep: per (url, text), the smallest uid."""
    rows = [r for r in table.to_pylist() if " " in r["text"]]
    winners: dict[tuple, str] = {}
    for row in rows:
        winners[row["url"], row["text"]] = min(winners.get((row["url"], row["text"]), row["uid"]), row["uid"])
    return [r for r in rows if winners[r["url"], r["text"]] == r["uid"]]


def _sized(rows: list[dict]) -> list[dict]:
    return [r for r in rows if min(r["original_width"], r["original_height"]) >= 10]


def _unscored(row: dict) -> bool:
    return row[SCORE] is None or math.isnan(row[SCORE])
