"""Captioning and VQA evaluation of a LLaVA model (through the `Captioner` inference API).

Captioning is scored as COCO does (`pycocoevalcap`): Stanford's PTB tokenizer (lower case,
punctuation dropped), then BLEU-4, METEOR 1.5 and CIDEr-D. The tokenizer and METEOR are Java
programs run on the machine's Java (17 here). An image's references are the distinct
non-blank captions of every row that holds the same image bytes (the pool's eval split repeats
drawings under several captions), so each image is captioned and scored once. The task's main
score is CIDEr (the captioning literature's headline metric; CIDEr-D is not bounded by 1).

VQA is templated: each image is asked each question of the task (by default the category
questions the stage-2 conversation set trains on) and the answer counts when it equals the
label after normalisation (VQA's rule, simplified: lower case, underscores as spaces,
punctuation and articles dropped, spaces collapsed). The main score is the accuracy over all
image-question pairs.
"""

from __future__ import annotations

import re
import shutil
import string
from pathlib import Path
from typing import Protocol

from PIL import Image
from tqdm import tqdm

from train.eval.suite import (
    LLAVA_KINDS,
    Suite,
    TaskData,
    TaskSpec,
    load_suite,
    load_task_data,
    open_image,
    require_kinds,
)

CAPTION_METRICS = ("BLEU-4", "METEOR", "CIDEr")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = {"a", "an", "the"}


class CaptionModel(Protocol):
    """What the evaluation needs of a model: `curate.models.llava.generate.Captioner` has it."""

    fingerprint: str

    def generate(self, images: list[Image.Image], prompt: str | None = None, *, max_new_tokens: int = 32,
                 batch_size: int = 16) -> list[list[str]]:
        """Texts for each image (the first is scored); prompt None asks for a caption."""


def _clean(text: str) -> str:
    """One line for the Java tools: whitespace collapsed (a line break would shift every later caption),
    METEOR's field separator removed."""
    return " ".join(text.replace("|||", " ").split())


def caption_metrics(references: list[list[str]], predictions: list[str]) -> dict[str, float]:
    """BLEU-4, METEOR and CIDEr-D of one prediction per image against that image's references."""
    if not shutil.which("java"):
        raise RuntimeError("captioning metrics need Java (pycocoevalcap's PTB tokenizer and METEOR): "
                           "install it, e.g. `apt-get install openjdk-17-jre-headless`")
    if len(references) != len(predictions) or not predictions:
        raise ValueError(f"expected one prediction per image and at least one image, got {len(predictions)} "
                         f"predictions for {len(references)} images")
    empty = [i for i, refs in enumerate(references) if not any(_clean(r) for r in refs)]
    if empty:
        raise ValueError(f"image(s) {empty[:10]} have no non-blank reference caption")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": _clean(r)} for r in refs if _clean(r)]
                              for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": _clean(p)}] for i, p in enumerate(predictions)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor_scorer = Meteor()  # a Java process, ended when the scorer is collected
    meteor, _ = meteor_scorer.compute_score(gts, res)
    del meteor_scorer
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-4": float(bleu[3]), "METEOR": float(meteor), "CIDEr": float(cider)}


def normalize_answer(text: str) -> str:
    """An answer for exact match: lower case, underscores as spaces, no punctuation or articles."""
    words = _PUNCTUATION.sub(" ", text.replace("_", " ").casefold()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def vqa_accuracy(predictions: list[str], answers: list[str]) -> float:
    """The share of predictions that equal their answer after `normalize_answer`."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"expected one answer per prediction and at least one, got {len(answers)} answers for "
                         f"{len(predictions)} predictions")
    return sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)) / len(answers)


def evaluate_captioner(model: CaptionModel, suite: Suite | str | Path, batch_size: int = 16,
                       progress: bool = True) -> dict:
    """Run every captioning and VQA task of `suite` with greedy decoding (each task's `tokens_per_text`
    at most per text); the result has the shape of
    `train.eval.evaluate.evaluate`'s: `{"suite", "model", "tasks": {name: {"kind", "data", "n", "skipped",
    "main", "main_metric", "metrics", "examples"}}, "aggregate"}` (aggregate: the mean of the main scores)."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    require_kinds(suite, LLAVA_KINDS, "LLaVA")
    tasks = {}
    for task in suite.tasks:
        data = load_task_data(task)
        run = _captioning if task.kind == "captioning" else _vqa
        tasks[task.name] = {"kind": task.kind, "data": task.data, "skipped": data.skipped,
                            **run(task, data, model, batch_size, progress)}
    aggregate = sum(result["main"] for result in tasks.values()) / len(tasks)
    return {"suite": suite.source, "model": model.fingerprint, "tasks": tasks, "aggregate": aggregate}


def _generate(task: TaskSpec, images: list[bytes], model: CaptionModel, prompt: str | None, batch_size: int,
              bar: tqdm) -> list[str]:
    """The model's first text per image, decoded a batch at a time (so only a batch of images is in memory)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = [open_image(task, start + i, data) for i, data in enumerate(images[start : start + batch_size])]
        out += [texts[0] for texts in model.generate(batch, prompt, max_new_tokens=task.tokens_per_text,
                                                      batch_size=batch_size)]
        bar.update(len(batch))
    return out


def _captioning(task: TaskSpec, data: TaskData, model: CaptionModel, batch_size: int, progress: bool) -> dict:
    """Caption each distinct image once; score against all of its captions."""
    references: dict[bytes, list[str]] = {}
    for image, caption in zip(data.images, data.captions):
        refs = references.setdefault(image, [])
        if caption not in refs:
            refs.append(caption)
    images = list(references)
    with tqdm(total=len(images), desc=task.name, unit="image", disable=not progress) as bar:
        predictions = _generate(task, images, model, None, batch_size, bar)
    metrics = caption_metrics(list(references.values()), predictions)
    examples = [{"prediction": p, "references": r} for p, r in zip(predictions[:5], list(references.values())[:5])]
    return {"n": len(images), "main": metrics["CIDEr"], "main_metric": "CIDEr", "metrics": metrics,
            "examples": examples}


def _vqa(task: TaskSpec, data: TaskData, model: CaptionModel, batch_size: int, progress: bool) -> dict:
    """Ask every image each question; exact match against its label."""
    answers = [data.classnames[t] for t in data.targets]
    per_question, examples = {}, []
    with tqdm(total=len(data.images) * len(task.vqa_questions), desc=task.name, unit="question",
              disable=not progress) as bar:
        for question in task.vqa_questions:
            predictions = _generate(task, data.images, model, question, batch_size, bar)
            per_question[question] = vqa_accuracy(predictions, answers)
            examples += [{"question": question, "prediction": p, "answer": a}
                         for p, a in zip(predictions[:3], answers[:3])]
    accuracy = sum(per_question.values()) / len(per_question)
    return {"n": len(data.images), "main": accuracy, "main_metric": "accuracy",
            "metrics": {"accuracy": accuracy, "per_question": per_question}, "examples": examples}
