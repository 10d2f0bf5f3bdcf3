"""The LLaVA objectives for train/loop.py: next-token loss on the assistant's answers, with the
vision tower always frozen; stage 1 trains the projector, stage 2 the projector and the LM."""

from __future__ import annotations

import torch
import torch.distributed as dist

from curate.models.llava.format import IGNORE
from curate.models.llava.model import Llava


class LlavaObjective:
    """Freezes what `stage` does not train and scores collated batches.

    The loss is a mean over the answer tokens of every rank's micro-batch (each rank divides
    its sum by the mean token count per rank, so DDP's gradient average is the global
    token mean): N processes train as one does on the same global batch. Logged per
    micro-batch: token_loss (that global mean), answer_tokens and tokens (all, padding aside).
    """

    def __init__(self, model: Llava, stage: int):
        self.module = model
        model.requires_grad_(False)
        model.projector.requires_grad_(True)
        if stage == 2:
            model.lm.requires_grad_(True)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        # answer tokens (the LM shifts labels by one) and all tokens, over every rank; kept on the
        # device (the loop reads the scalars after the step, so nothing waits for the GPU here)
        counts = torch.stack([(batch["labels"][:, 1:] != IGNORE).sum(), batch["attention_mask"].sum()]).float()
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world > 1:
            dist.all_reduce(counts)
        out = model({**batch, "num_items_in_batch": counts[0] / world})
        mean = out.loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
        return out.loss, {"token_loss": mean / world, "answer_tokens": counts[0], "tokens": counts[1]}

    def after_step(self) -> None:
        """Nothing to clamp."""
