"""The CLIP objective: open_clip's contrastive InfoNCE or SigLIP sigmoid loss, with
negatives gathered from every rank."""

from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss, SigLipLoss

from curate.models.clip import Clip

MAX_LOGIT_SCALE = math.log(100)  # CLIP's clamp on the learned temperature


class ClipObjective:
    """Scores (images, tokens) batches with InfoNCE (`infonce`) or SigLIP (`siglip`)."""

    def __init__(self, clip: Clip, loss: str, rank: int, world_size: int):
        self.module = clip.model
        self.kind = loss
        if loss == "siglip":
            self.loss_fn = SigLipLoss(rank=rank, world_size=world_size)
        else:
            self.loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True,
                                    rank=rank, world_size=world_size)

    def loss(self, model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        images, texts = batch
        out = model(images, texts)
        args = [out["image_features"], out["text_features"], out["logit_scale"]]
        if self.kind == "siglip":
            args.append(out["logit_bias"])
        # the temperature stays a device tensor: the loop reads every scalar once, after the step
        return self.loss_fn(*args), {"logit_scale": out["logit_scale"].detach()}

    @torch.no_grad()
    def after_step(self) -> None:
        self.module.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
