"""Captioning metrics (pycocoevalcap on the machine's Java) and templated VQA accuracy, on the real eval split."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from train.eval.captioning import caption_metrics, normalize_answer, vqa_accuracy
from train.eval.suite import SuiteError, load_suite


@pytest.fixture(scope="module")
def captions(pool_root) -> list[str]:
    """The non-blank captions of the test pool's held-out eval split (real artists' titles and descriptions)."""
    rows = pq.read_table(pool_root / "eval", columns=["text"]).column("text").to_pylist()
    found = [text for text in rows if text and text.strip()]
    assert len(found) >= 8
    return found


def test_perfect_captions_score_highest_and_wrong_ones_lowest(captions):
    references = [[c] for c in captions]
    wrong = captions[1:] + captions[:1]  # every image gets another image's caption
    half = [c if i % 2 else w for i, (c, w) in enumerate(zip(captions, wrong))]
    perfect, mixed, bad = (caption_metrics(references, p) for p in (captions, half, wrong))
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and perfect["METEOR"] == pytest.approx(1.0)
    for metric in ("BLEU-4", "METEOR", "CIDEr"):
        assert perfect[metric] > mixed[metric] > bad[metric] >= 0, metric


def test_any_reference_of_an_image_counts_and_text_is_made_safe_for_the_java_tools(captions):
    """A prediction matching a second reference is as good as one matching the first; line breaks and
    METEOR's `|||` separator inside a caption must not shift the captions of later images."""
    references = [[f"{c} and more", c] for c in captions]
    second = caption_metrics(references, captions)
    first = caption_metrics(references, [f"{c} and more" for c in captions])
    assert second["METEOR"] == pytest.approx(first["METEOR"], abs=0.05) and second["METEOR"] > 0.9
    messy = [c.replace(" ", "\n", 1).replace(" ", " ||| ", 1) for c in captions]
    assert caption_metrics([[c] for c in captions], messy)["BLEU-4"] > 0.5


def test_caption_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="one prediction per image"):
        caption_metrics([["a cat"]], ["a cat", "a dog"])
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] have no non-blank reference"):
        caption_metrics([["a cat"], ["  "]], ["a cat", "a dog"])


def test_vqa_accuracy_counts_normalised_exact_matches():
    assert normalize_answer("The Signs_and_Symbols.") == "signs and symbols"
    predictions = ["Signs and symbols.", "the animals", "food", "computer stuff", "an  office!"]
    answers = ["signs_and_symbols", "animals", "people", "computer", "office"]
    assert vqa_accuracy(predictions, answers) == pytest.approx(3 / 5)
    assert vqa_accuracy(answers, answers) == 1.0
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], [])


def test_suite_takes_captioning_and_vqa_tasks_and_checks_their_fields(tmp_path, pool_root):
    eval_dir = pool_root / "eval"
    good = {"tasks": [{"name": "caps", "kind": "captioning", "data": str(eval_dir), "caption_column": "text"},
                      {"name": "vqa", "kind": "vqa", "data": str(eval_dir), "label_column": "category"}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(good))
    suite = load_suite(path)
    assert suite.tasks[1].vqa_questions[0] == "What category does this drawing belong to?"
    bad = {"tasks": [{"name": "vqa", "kind": "vqa", "data": str(eval_dir), "caption_column": "text"}]}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SuiteError, match=r"tasks\[0\]\.caption_column: only used by retrieval and captioning tasks"):
        load_suite(path)
    bad = {"tasks": [{"name": "caps", "kind": "captioning", "data": str(eval_dir), "questions": ["Why?"],
                      "caption_column": "text"}]}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SuiteError, match=r"tasks\[0\]\.questions: only used by vqa tasks"):
        load_suite(path)


def test_clip_evaluation_refuses_llava_tasks(tmp_path, pool_root):
    from curate.models.clip import create_clip
    from train.eval.evaluate import evaluate

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"tasks": [
        {"name": "caps", "kind": "captioning", "data": str(pool_root / "eval"), "caption_column": "text"}]}))
    with pytest.raises(SuiteError,
                       match=r"a CLIP model is scored on zeroshot and retrieval tasks; .*caps \(captioning\)"):
        evaluate(create_clip("clip-tiny"), path, progress=False)


def test_curate_eval_scores_a_llava_checkpoint_on_captioning_and_vqa(tmp_path, pool_root, llava_checkpoint,
                                                                    clip_checkpoint):
    from click.testing import CliRunner

    from curate.cli.eval import eval_command
    from curate.models.llava.generate import Captioner
    from train.eval.suite import load_task_data, open_image

    question = "What category does this drawing belong to?"
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [
        {"name": "caps", "kind": "captioning", "data": str(pool_root / "eval"), "caption_column": "text"},
        {"name": "vqa", "kind": "vqa", "data": str(pool_root / "eval"), "label_column": "category",
         "questions": [question]}]}))
    output = tmp_path / "results.json"
    result = CliRunner().invoke(eval_command, ["--checkpoint", str(llava_checkpoint), "--suite", str(suite),
                                               "--output", str(output), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert all(metric in result.output for metric in ("CIDEr", "BLEU-4", "METEOR", "accuracy"))
    results = json.loads(output.read_text())
    caps, vqa = results["tasks"]["caps"], results["tasks"]["vqa"]
    eval_rows = pq.read_table(pool_root / "eval", columns=["image", "text"]).to_pylist()
    assert caps["n"] == len({r["image"] for r in eval_rows if r["text"].strip()})  # one caption per distinct image
    assert set(caps["metrics"]) == {"BLEU-4", "METEOR", "CIDEr"} and caps["main"] == caps["metrics"]["CIDEr"]
    assert results["aggregate"] == pytest.approx((caps["main"] + vqa["main"]) / 2)
    # the VQA score is the exact-match rate of the model's own greedy answers
    captioner = Captioner.load(llava_checkpoint, "cpu")
    task = load_suite(suite).tasks[1]
    data = load_task_data(task)
    answers = captioner.generate([open_image(task, i, b) for i, b in enumerate(data.images)], question)
    expected = vqa_accuracy([a[0] for a in answers], [data.classnames[t] for t in data.targets])
    assert vqa["main"] == pytest.approx(expected) and vqa["n"] == len(data.images)
    assert results["model"] == captioner.fingerprint
    # each kind of model is scored only on its own kinds of task
    wrong = CliRunner().invoke(eval_command, ["--checkpoint", str(clip_checkpoint), "--suite", str(suite)])
    assert wrong.exit_code == 2 and "a CLIP model is scored on zeroshot and retrieval tasks" in wrong.output
