"""CapFilt: recaption (K seeded captions per image, resumable) and caption_filter (threshold /
top-n, output policies, provenance) on real pool images."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.engines import LocalEngine
from curate.models.llava.generate import Captioner
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from curate.stages.caption_filter import CaptionFilter, CaptionFilterConfig, derived_uid
from curate.stages.recaption import Recaption, RecaptionConfig

K = 3


@pytest.fixture(scope="module")
def sample(pool_table) -> pa.Table:
    return pool_table.select(["uid", "url", "text", "image"]).slice(0, 12)


def recaption(checkpoint, **params) -> Recaption:
    stage = Recaption(RecaptionConfig(checkpoint=str(checkpoint), num_captions=K, max_new_tokens=8, **params))
    stage.setup()
    return stage


def captions_by_uid(table: pa.Table) -> dict[str, list[str]]:
    return dict(zip(table.column("uid").to_pylist(), table.column("synthetic_captions").to_pylist()))


def test_recaption_writes_k_seeded_captions_independent_of_batching(llava_checkpoint, sample):
    first = recaption(llava_checkpoint, batch_size=5).process(sample)
    captions = captions_by_uid(first.table)
    assert all(len(c) == K and all(isinstance(t, str) for t in c) for c in captions.values())
    assert len({tuple(c) for c in captions.values()}) > 1  # images get their own captions
    assert any(len(set(c)) > 1 for c in captions.values())  # nucleus sampling varies within an image
    shuffled = sample.take(list(reversed(range(sample.num_rows))))
    again = recaption(llava_checkpoint, batch_size=2).process(shuffled)
    assert captions_by_uid(again.table) == captions  # other batches and order, same captions
    other_seed = captions_by_uid(recaption(llava_checkpoint, seed=1).process(sample).table)
    assert other_seed != captions
    generator = first.table.column("caption_generator")[0].as_py()
    assert generator.startswith(f"llava {llava_checkpoint}") and "sha256" in generator


def test_recaption_rejects_undecodable_images(llava_checkpoint, sample, fault_images):
    broken = pa.table({"uid": ["f" * 32], "url": [None], "text": ["x"], "image": [fault_images["corrupt_image"]]},
                      schema=sample.schema)
    verdict = recaption(llava_checkpoint).process(pa.concat_tables([sample.slice(0, 2), broken]))
    assert verdict.reasons.tolist() == [None, None, "uncaptionable_image"]


def test_interrupted_run_resumes_without_regenerating(llava_checkpoint, sample, tmp_path, monkeypatch):
    reference = captions_by_uid(recaption(llava_checkpoint, batch_size=4).process(sample).table)
    pq.write_table(sample, tmp_path / "input.parquet")
    pipeline = parse_pipeline({"name": "recaption", "stages": [
        {"stage": "recaption", "checkpoint": str(llava_checkpoint), "num_captions": K, "max_new_tokens": 8,
         "batch_size": 4, "cache": str(tmp_path / "captions")}]}, "<recaption>")
    real_generate = Captioner.generate
    generated: list[int] = []

    def failing_after_two_batches(self, images, *args, **kwargs):
        if len(generated) == 2:
            raise RuntimeError("worker lost")
        generated.append(len(images))
        return real_generate(self, images, *args, **kwargs)

    def run():
        return run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(tmp_path / "input.parquet")],
                            tmp_path / "out")

    monkeypatch.setattr(Captioner, "generate", failing_after_two_batches)
    with pytest.raises(Exception, match="worker lost"):
        run()
    assert generated == [4, 4]

    counted: list[int] = []

    def counting(self, images, *args, **kwargs):
        counted.append(len(images))
        return real_generate(self, images, *args, **kwargs)

    monkeypatch.setattr(Captioner, "generate", counting)
    stats = run()  # the same run, resumed: the cache is not an input, so its new files change nothing
    assert stats["kept"] == sample.num_rows
    assert sum(counted) == sample.num_rows - 8  # only the images not captioned before the failure
    assert captions_by_uid(pq.read_table(tmp_path / "out" / "parquet")) == reference


@pytest.fixture(scope="module")
def recaptioned(llava_checkpoint, sample):
    """The sample with synthetic captions: the captioner's, plus each sample's own web caption
    (so some synthetic caption matches its image as well as the web one does)."""
    table = recaption(llava_checkpoint).process(sample).table
    web = table.column("text").to_pylist()
    return table.set_column(table.column_names.index("synthetic_captions"), "synthetic_captions",
                            pa.array([c + [w] for c, w in zip(table["synthetic_captions"].to_pylist(), web)]))


def caption_filter(checkpoint, **params) -> CaptionFilter:
    stage = CaptionFilter(CaptionFilterConfig(checkpoint=str(checkpoint), **params))
    stage.setup()
    return stage


def test_caption_filter_scores_every_caption_and_keeps_by_threshold_and_top_n(clip_checkpoint, recaptioned):
    scored = caption_filter(clip_checkpoint, threshold=-1.0, policy="columns").process(recaptioned).table
    web_scores, synthetic = scored["web_score"].to_pylist(), scored["synthetic_scores"].to_pylist()
    assert [len(s) for s in synthetic] == [K + 1] * recaptioned.num_rows
    for web, scores in zip(web_scores, synthetic):
        assert scores[-1] == pytest.approx(web, abs=1e-6)  # the web caption again, scored the same way
    best = sorted(max(row) for row in synthetic)
    threshold = (best[0] + best[-1]) / 2  # the rows whose best caption is below this lose every caption
    verdict = caption_filter(clip_checkpoint, threshold=threshold, top_n=2, policy="columns").process(recaptioned)
    for i, row in enumerate(verdict.table.to_pylist()):
        captions = recaptioned["synthetic_captions"][i].as_py()
        candidates = [(row["web_score"], row["text"])] + list(zip(row["synthetic_scores"], captions))
        passing = sorted((c for c in candidates if c[0] >= threshold), key=lambda c: -c[0])
        texts = [t for _, t in passing]
        assert row["captions_kept"] == [t for k, t in enumerate(texts) if t not in texts[:k]][:2]
        assert row["text"] == recaptioned["text"][i].as_py() and row["caption_source"] == "web"
        assert verdict.reasons[i] == (None if passing else "no_caption_passes")
    assert "no_caption_passes" in verdict.reasons and None in verdict.reasons


def test_output_policies(clip_checkpoint, recaptioned):
    params = dict(top_n=2, include_web=False)
    replace = caption_filter(clip_checkpoint, policy="replace", **params).process(recaptioned)
    rows = replace.table.to_pylist()
    assert all(r["caption_source"] == "synthetic" and r["text"] == r["captions_kept"][0] for r in rows)
    assert all(r["web_text"] == w for r, w in zip(rows, recaptioned["text"].to_pylist()))
    assert all(r["caption_score"] == max(r["synthetic_scores"]) for r in rows)

    separate = caption_filter(clip_checkpoint, policy="separate", **params).process(recaptioned)
    table = separate.table
    n = recaptioned.num_rows
    assert table.num_rows == 2 * n and separate.reasons.tolist() == [None] * (2 * n)
    extra = table.slice(n).to_pylist()
    assert [r["parent_uid"] for r in extra] == recaptioned["uid"].to_pylist()
    assert [r["uid"] for r in extra] == [derived_uid(u, 1) for u in recaptioned["uid"].to_pylist()]
    assert [r["text"] for r in extra] == [r["captions_kept"][1] for r in rows]
    assert table.slice(0, n)["parent_uid"].null_count == n


def test_pipeline_with_separate_policy_accounts_for_derived_samples(llava_checkpoint, clip_checkpoint, faulty_input,
                                                                    tmp_path):
    pipeline = parse_pipeline({"name": "capfilt", "batch_size": 32, "stages": [
        {"stage": "decode"},
        {"stage": "recaption", "checkpoint": str(llava_checkpoint), "num_captions": 2, "max_new_tokens": 6},
        {"stage": "caption_filter", "checkpoint": str(clip_checkpoint), "top_n": 2, "policy": "separate"},
    ]}, "<capfilt>")
    stats = run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(faulty_input)], tmp_path / "out")
    kept = pq.read_table(tmp_path / "out" / "parquet")
    derived = kept.num_rows - kept["parent_uid"].null_count
    assert derived > 0 and stats["derived"] == derived
    assert stats["kept"] + stats["rejected"] == stats["input"] + derived
    parents = set(kept.filter(kept["parent_uid"].is_null())["uid"].to_pylist())
    assert stats["kept_fraction"] == pytest.approx(len(parents) / stats["input"], abs=1e-6)
    assert len(np.load(tmp_path / "out" / "uids.npy")) == len(parents)  # DataComp's subset file: pool samples only
    assert set(kept.filter(kept["parent_uid"].is_valid())["parent_uid"].to_pylist()) <= parents
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Recaptioning (CapFilt)" in report and "data:image/jpeg;base64" in report
