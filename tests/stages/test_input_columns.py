"""A column the input gives in place of one a stage computes (curate/stages/input_columns.py),
through both stages that read one: the column is written under the stage's name, a row without a
value is rejected naming the column, and a missing column is an error naming the option."""

import math

import pyarrow as pa
import pytest

from curate.stages.clip_score import ClipScore, ClipScoreConfig
from curate.stages.near_dedup import NearDedup, NearDedupConfig

UIDS = pa.array(["a", "b", "c"])


def test_clip_score_reads_its_score_column():
    stage = ClipScore(ClipScoreConfig(score_column="s", threshold=0.2))
    verdict = stage.process(pa.table({"uid": UIDS, "s": pa.array([0.5, None, math.nan], pa.float64())}))
    assert verdict.table.column("clip_score").type == pa.float32()
    assert list(verdict.reasons) == [None, "unscorable_image", "unscorable_image"]
    assert list(verdict.values) == [None, "no s", "no s"]


def test_near_dedup_reads_its_hash_column():
    stage = NearDedup(NearDedupConfig(hash_column="h"))
    verdict = stage.process(pa.table({"uid": UIDS, "h": pa.array([2**64 - 1, 7, None], pa.uint64())}))
    assert verdict.table.column("phash").to_pylist() == [-1, 7, None]  # the 64 bits as they are
    assert list(verdict.reasons) == [None, None, "phash_failed"]
    assert list(verdict.values) == [None, None, "no h"]


@pytest.mark.parametrize("stage, option", [
    (ClipScore(ClipScoreConfig(score_column="s", threshold=0.2)), "score_column"),
    (NearDedup(NearDedupConfig(hash_column="s")), "hash_column"),
])
def test_a_missing_given_column_names_the_option(stage, option):
    with pytest.raises(ValueError, match=rf"{stage.name}: {option} 's' is not a column of the input \(columns: "
                                         r"\['uid'\]\)"):
        stage.process(pa.table({"uid": UIDS}))
