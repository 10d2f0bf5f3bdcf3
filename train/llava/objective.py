"""The LLaVA objectives for train/loop.py: next-token loss on the assistant's answers, with the
vision tower always frozen; stage 1 trains the projector, stage 2 the projector and the LM."""

from __future__ import annotations

import torch

from train.llava.format import IGNORE
from train.llava.model import Llava


class LlavaObjective:
    """Freezes what `stage` does not train and scores collated batches."""

    def __init__(self, model: Llava, stage: int):
        self.module = model
        model.requires_grad_(False)
        model.projector.requires_grad_(True)
        if stage == 2:
            model.lm.requires_grad_(True)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch)
        return out.loss, {"answer_tokens": float((batch["labels"] != IGNORE).sum())}

    def after_step(self) -> None:
        """Nothing to clamp."""
