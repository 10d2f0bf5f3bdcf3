"""The CLIP objective leaves the device alone mid-step: the scalars it logs stay device tensors,
which the loop reads once, after the optimizer step (train/loop.py), so a GPU never waits on a
micro-batch's temperature."""

import pytest
import torch

from curate.models.clip import create_clip
from train.clip.objective import ClipObjective


def _batch(clip, device):
    side = clip.model.visual.image_size
    side = side[0] if isinstance(side, tuple) else side
    images = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(0))
    return images.to(device), clip.tokenizer(["a cat", "a dog", "a red star", "two flags"]).to(device)


@pytest.mark.parametrize("loss", ["infonce", "siglip"])
def test_the_logged_temperature_stays_a_device_tensor(loss):
    clip = create_clip("clip-tiny", siglip=loss == "siglip")
    value, scalars = ClipObjective(clip, loss, 0, 1).loss(clip.model, _batch(clip, "cpu"))
    scale = scalars["logit_scale"]
    assert isinstance(scale, torch.Tensor) and scale.ndim == 0 and not scale.requires_grad
    assert float(scale) == pytest.approx(float(clip.model.logit_scale.exp()))
    assert value.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("loss", ["infonce", "siglip"])
def test_a_cuda_micro_batch_never_syncs(loss):
    """Forward, loss and backward of a micro-batch under CUDA's sync debug mode "error": any host
    read of a device value (a float() of the temperature) raises."""
    clip = create_clip("clip-tiny", device="cuda", siglip=loss == "siglip")
    objective = ClipObjective(clip, loss, 0, 1)
    batch = _batch(clip, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value, scalars = objective.loss(clip.model, batch)
        value.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(scalars["logit_scale"]) == pytest.approx(float(clip.model.logit_scale.exp()))
