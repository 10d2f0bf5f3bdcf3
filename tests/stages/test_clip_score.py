"""CLIP score filter on real pool images: top fraction, absolute and per-language thresholds."""

import math

import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from curate.models.clip import load_checkpoint
from curate.stages.clip_score import ClipScore, ClipScoreConfig
from tests.stages.test_dedup import run_global


@pytest.fixture(scope="module")
def pool_rows(pool_table):
    rows = pool_table.select(["uid", "text", "image"]).slice(0, 40)
    return rows.append_column("lang", pa.array(["en" if i % 2 else "de" for i in range(rows.num_rows)]))


def kept_and_scores(config, table):
    processed, verdict = run_global(ClipScore(config), table)
    scores = dict(zip(processed.table["uid"].to_pylist(), processed.table["clip_score"].to_pylist()))
    kept = {u for u, r in zip(verdict.table["uid"].to_pylist(), verdict.reasons) if r is None}
    return kept, scores, verdict


def test_scores_are_the_models_cosine(clip_checkpoint, pool_rows):
    _, scores, _ = kept_and_scores(ClipScoreConfig(checkpoint=str(clip_checkpoint), threshold=-1.0), pool_rows)
    clip, _ = load_checkpoint(clip_checkpoint)
    import io

    from PIL import Image

    row = pool_rows.slice(3, 1).to_pylist()[0]
    with torch.no_grad():
        image = clip.model.encode_image(clip.preprocess(Image.open(io.BytesIO(row["image"])).convert("RGB"))[None])
        text = clip.model.encode_text(clip.tokenizer([row["text"] or ""]))
    expected = torch.nn.functional.cosine_similarity(image, text).item()
    assert scores[row["uid"]] == pytest.approx(expected, abs=1e-5)


def test_top_fraction_keeps_that_share_of_the_pool(clip_checkpoint, pool_rows):
    kept, scores, _ = kept_and_scores(ClipScoreConfig(checkpoint=str(clip_checkpoint), top_fraction=0.3), pool_rows)
    assert len(kept) == math.ceil(0.3 * pool_rows.num_rows)
    assert min(scores[u] for u in kept) >= max(s for u, s in scores.items() if u not in kept)


def test_absolute_and_per_language_thresholds(clip_checkpoint, pool_rows):
    _, scores, _ = kept_and_scores(ClipScoreConfig(checkpoint=str(clip_checkpoint), threshold=-1.0), pool_rows)
    middle = sorted(scores.values())[len(scores) // 2]
    kept, _, verdict = kept_and_scores(ClipScoreConfig(checkpoint=str(clip_checkpoint), threshold=middle), pool_rows)
    assert kept == {u for u, s in scores.items() if s >= middle}
    low, high = sorted(scores.values())[len(scores) // 4], sorted(scores.values())[3 * len(scores) // 4]
    config = ClipScoreConfig(checkpoint=str(clip_checkpoint), thresholds={"en": high, "default": low})
    kept, _, _ = kept_and_scores(config, pool_rows)
    langs = dict(zip(pool_rows["uid"].to_pylist(), pool_rows["lang"].to_pylist()))
    assert kept == {u for u, s in scores.items() if s >= (high if langs[u] == "en" else low)}
    assert "low_clip_score" in verdict.reasons


def test_config_needs_exactly_one_rule(clip_checkpoint):
    with pytest.raises(ValidationError, match="exactly one of"):
        ClipScoreConfig(checkpoint=str(clip_checkpoint), threshold=0.2, top_fraction=0.3)
    with pytest.raises(ValidationError, match="'default'"):
        ClipScoreConfig(checkpoint=str(clip_checkpoint), thresholds={"en": 0.28})
