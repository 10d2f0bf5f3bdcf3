"""Evaluate a CLIP model on a suite: zero-shot classification and image/text retrieval.

Every task reports its metrics, a `main` score named by `main_metric` (zeroshot: top-1
accuracy; retrieval: the mean of image->text and text->image R@1), its sample count `n` and the rows it `skipped`;
`aggregate` is the unweighted mean of the tasks' main scores, as in DataComp.

Retrieval counts a row as a correct match for another when the two share their caption
(ignoring case and spacing) or their image bytes: real eval data repeat both (the sample
pool's eval split has one caption on 153 drawings), no model can tell such rows apart, and
with pessimistic ties a duplicate would otherwise always count as a miss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from curate.models.clip import Clip
from train.eval.metrics import mean_per_class_recall, retrieval_recalls, zero_shot_top1
from train.eval.suite import (
    CLIP_KINDS,
    Suite,
    TaskData,
    TaskSpec,
    load_suite,
    load_task_data,
    open_image,
    require_kinds,
)


def evaluate(clip: Clip, suite: Suite | str | Path, batch_size: int = 64, device: str | torch.device = "cpu",
             progress: bool = True) -> dict:
    """Run every task of `suite` (a loaded Suite or a suite file) and return the results as a dict:
    `{"suite", "model", "tasks": {name: {"kind", "data", "n", "skipped", "main", "metrics", ...}}, "aggregate"}`.

    The model runs in eval mode without gradients, in batches of `batch_size`; its train/eval
    mode is restored afterwards. `progress` shows a bar per task.
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    require_kinds(suite, CLIP_KINDS, "CLIP")
    model = clip.model.to(device)
    was_training = model.training
    model.eval()
    tasks = {}
    try:
        for task in suite.tasks:
            data = load_task_data(task)
            if task.kind == "retrieval":
                texts = len(data.captions)
            else:
                texts = len(data.classnames) * len(task.prompt_templates)
            with torch.no_grad(), tqdm(total=len(data.images) + texts, desc=task.name, unit="item",
                                       disable=not progress) as bar:
                encoder = _Encoder(clip, batch_size, device, bar)
                run = _zeroshot if task.kind == "zeroshot" else _retrieval
                tasks[task.name] = {"kind": task.kind, "data": task.data, "n": len(data.images),
                                    "skipped": data.skipped, **run(task, data, encoder)}
    finally:
        model.train(was_training)
    aggregate = sum(result["main"] for result in tasks.values()) / len(tasks)
    return {"suite": suite.source, "model": clip.name, "tasks": tasks, "aggregate": aggregate}


class _Encoder:
    """Batched, L2-normalised image and text embeddings (float32, on the CPU), advancing a progress bar."""

    def __init__(self, clip: Clip, batch_size: int, device: str | torch.device, bar: tqdm):
        self.clip, self.batch_size, self.device, self.bar = clip, batch_size, device, bar

    def images(self, task: TaskSpec, images: list[bytes]) -> torch.Tensor:
        """Embeddings of encoded images, decoded with Pillow and the model's eval transform."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self._pixels(task, start + i, data)
                                 for i, data in enumerate(images[start : start + self.batch_size])])
            out.append(self._normalised(self.clip.model.encode_image(batch.to(self.device))))
        return torch.cat(out)

    def texts(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of texts, tokenized by the model's tokenizer."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.clip.tokenizer(texts[start : start + self.batch_size]).to(self.device)
            out.append(self._normalised(self.clip.model.encode_text(tokens)))
        return torch.cat(out)

    def _pixels(self, task: TaskSpec, row: int, data: bytes) -> torch.Tensor:
        return self.clip.preprocess(open_image(task, row, data))

    def _normalised(self, features: torch.Tensor) -> torch.Tensor:
        self.bar.update(len(features))
        return F.normalize(features.float(), dim=-1).cpu()


def _zeroshot(task: TaskSpec, data: TaskData, encoder: _Encoder) -> dict:
    """Top-1 against one embedding per class: the normalised mean of its prompts' embeddings."""
    prompts = encoder.texts([p for name in data.classnames for p in task.prompts(name)])
    classes = F.normalize(prompts.view(len(data.classnames), len(task.prompt_templates), -1).mean(dim=1), dim=-1)
    logits = encoder.images(task, data.images) @ classes.T
    labels = torch.tensor(data.targets)
    top1 = zero_shot_top1(logits, labels)
    return {"main": top1, "main_metric": "top1", "classes": len(data.classnames),
            "metrics": {"top1": top1, "mean_per_class_recall": mean_per_class_recall(logits, labels)}}


def _retrieval(task: TaskSpec, data: TaskData, encoder: _Encoder) -> dict:
    """Image->text and text->image recall@1/5/10 over the task's image-caption pairs."""
    similarity = encoder.images(task, data.images) @ encoder.texts(data.captions).T
    recalls = retrieval_recalls(similarity, positives=same_content(data.captions, data.images))
    return {"main": (recalls["image_to_text_R@1"] + recalls["text_to_image_R@1"]) / 2, "main_metric": "mean R@1",
            "metrics": recalls}


def same_content(captions: list[str], images: list[bytes]) -> np.ndarray:
    """(N, N) mask of rows that share their caption (ignoring case and spacing) or their image bytes."""
    def groups(values: list) -> np.ndarray:
        ids: dict = {}
        return np.array([ids.setdefault(value, len(ids)) for value in values])

    texts = groups([" ".join(caption.split()).casefold() for caption in captions])
    pixels = groups(images)
    return (texts[:, None] == texts[None, :]) | (pixels[:, None] == pixels[None, :])
