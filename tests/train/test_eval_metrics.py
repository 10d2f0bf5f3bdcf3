"""Metric code against small hand-computed cases: ranks, pessimistic ties, per-class recall, retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.eval.metrics import correct_ranks, match_ranks, mean_per_class_recall, retrieval_recalls, zero_shot_top1


def test_ranks_count_other_columns_scoring_at_least_the_correct_one():
    scores = np.array([[0.9, 0.1, 0.5],
                       [0.2, 0.3, 0.8],
                       [0.4, 0.4, 0.1],    # tie between the correct column 0 and column 1
                       [0.7, 0.7, 0.7]])   # everything tied: the correct one ranks last
    assert correct_ranks(scores, np.array([0, 1, 0, 2])).tolist() == [0, 1, 1, 2]


def test_top1_is_pessimistic_about_ties():
    logits = np.array([[2.0, 1.0], [1.0, 1.0], [0.0, 3.0], [5.0, 5.0]])
    assert zero_shot_top1(logits, np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert zero_shot_top1(np.zeros((4, 3)), np.array([0, 1, 2, 0])) == 0.0  # collapsed model: no lucky hits


def test_nan_scores_are_never_hits():
    logits = np.array([[np.nan, 0.0], [1.0, np.nan]])
    assert correct_ranks(logits, np.array([0, 0])).tolist() == [1, 0]
    assert zero_shot_top1(logits, np.array([0, 0])) == pytest.approx(0.5)


def test_mean_per_class_recall_weighs_classes_equally():
    # four samples of class 0, all right; one of class 1, wrong; class 2 has no samples (a distractor only)
    logits = np.array([[3.0, 1.0, 0.0]] * 4 + [[3.0, 1.0, 0.0]])
    labels = np.array([0, 0, 0, 0, 1])
    assert zero_shot_top1(logits, labels) == pytest.approx(0.8)
    assert mean_per_class_recall(logits, labels) == pytest.approx(0.5)  # (4/4 + 0/1) / 2, class 2 not averaged


def test_mean_per_class_recall_partial_classes():
    logits = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [1, 0]], dtype=float)
    labels = np.array([0, 0, 0, 1, 1, 1])  # class 0: 2/3 right, class 1: 2/3 right
    assert mean_per_class_recall(logits, labels) == pytest.approx(2 / 3)


def test_retrieval_perfect_and_reversed():
    n = 12
    perfect = retrieval_recalls(np.eye(n))
    assert set(perfect) == {f"{way}_R@{k}" for way in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert all(v == 1.0 for v in perfect.values())
    gap = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]).astype(float)  # the true pair scores lowest
    assert all(v == 0.0 for v in retrieval_recalls(gap).values())
    assert retrieval_recalls(gap, ks=(n,)) == {f"image_to_text_R@{n}": 1.0, f"text_to_image_R@{n}": 1.0}


def test_retrieval_hand_computed_both_ways():
    similarity = np.array([[0.90, 0.80, 0.10],
                           [0.95, 0.50, 0.20],
                           [0.10, 0.20, 0.30]])
    # image->text (rows): ranks 0, 1, 0; text->image (columns): ranks 1, 1, 0
    assert retrieval_recalls(similarity, ks=(1, 2)) == pytest.approx({
        "image_to_text_R@1": 2 / 3, "image_to_text_R@2": 1.0,
        "text_to_image_R@1": 1 / 3, "text_to_image_R@2": 1.0,
    })


def test_retrieval_ties_rank_the_true_pair_last():
    result = retrieval_recalls(np.ones((3, 3)), ks=(1, 2, 3))
    assert result == {"image_to_text_R@1": 0.0, "image_to_text_R@2": 0.0, "image_to_text_R@3": 1.0,
                      "text_to_image_R@1": 0.0, "text_to_image_R@2": 0.0, "text_to_image_R@3": 1.0}


def test_match_ranks_use_the_best_correct_column():
    scores = np.array([[0.1, 0.9, 0.5, 0.7],
                       [0.6, 0.6, 0.2, 0.6]])
    positives = np.array([[True, False, True, False],    # best correct 0.5: beaten by 0.9 and 0.7
                          [True, True, False, False]])   # best correct 0.6: tied with column 3
    assert match_ranks(scores, positives).tolist() == [2, 1]


def test_retrieval_with_duplicate_captions_as_positives():
    # texts 0 and 1 are the same caption, so they embed identically; images 0 and 1 each match both
    similarity = np.array([[0.9, 0.9, 0.1],
                           [0.7, 0.7, 0.3],
                           [0.2, 0.2, 0.8]])
    assert retrieval_recalls(similarity, ks=(1,))["image_to_text_R@1"] == pytest.approx(1 / 3)  # ties count against
    positives = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    # image->text: all hit; text->image: texts 0 and 1 find image 0 (a correct one) first, text 2 finds image 2
    assert retrieval_recalls(similarity, ks=(1,), positives=positives) == {"image_to_text_R@1": 1.0,
                                                                           "text_to_image_R@1": 1.0}


def test_torch_and_numpy_inputs_agree():
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 7, generator=generator), torch.randint(0, 7, (50,), generator=generator)
    assert zero_shot_top1(logits, labels) == zero_shot_top1(logits.numpy(), labels.numpy())
    assert mean_per_class_recall(logits, labels) == mean_per_class_recall(logits.numpy(), labels.numpy())
    similarity = torch.randn(20, 20, generator=generator)
    assert retrieval_recalls(similarity) == retrieval_recalls(similarity.numpy())


@pytest.mark.parametrize("call, message", [
    (lambda: retrieval_recalls(np.ones((2, 3))), "square"),
    (lambda: zero_shot_top1(np.ones((2, 3)), np.array([0, 3])), "targets must lie in"),
    (lambda: zero_shot_top1(np.ones((2, 3)), np.array([0])), "expected scores"),
    (lambda: zero_shot_top1(np.ones((0, 3)), np.array([], dtype=int)), "no rows"),
    (lambda: match_ranks(np.ones((2, 2)), np.array([[True, False], [False, False]])), "row 1 has none"),
])
def test_bad_shapes_are_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
