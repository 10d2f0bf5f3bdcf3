"""The LLaVA model: pixel shuffle, the prefix-LM (PaliGemma) masks and what they do inside the
LM, checkpoints that rebuild the model alone."""

import pytest
import torch

from curate.models.llava.config import LlavaModelConfig
from curate.models.llava.model import Llava, VisionTower, load_checkpoint, pixel_shuffle, prefix_lm_mask
from train.llava.build import build_llava


def test_pixel_shuffle_merges_neighbouring_patches():
    grid = torch.arange(16.0).reshape(1, 16, 1)  # a 4x4 grid, patch value = its index
    out = pixel_shuffle(grid, 2)
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0, 1, 4, 5] and out[0, 3].tolist() == [10, 11, 14, 15]


def test_prefix_lm_mask_by_hand():
    attention = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    mask = prefix_lm_mask(attention, torch.tensor([2, 3]))[:, 0].int()
    assert mask[0].tolist() == [
        [1, 0, 0, 0, 0, 0],  # padding queries see only themselves
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],  # prefix (positions 2, 3): both ways
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],  # answer: causal
        [0, 0, 1, 1, 1, 1]]
    assert mask[1].tolist() == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1]]


@pytest.mark.parametrize("prefix_lm", [True, False])
def test_prefix_lm_attention_inside_the_model(llava_model_config, tiny_lm, pool_images, prefix_lm):
    """With prefix-LM a prompt token sees later prompt tokens but never the answer; without it,
    nothing sees later tokens."""
    torch.manual_seed(0)
    model = build_llava(LlavaModelConfig(**{**llava_model_config, "prefix_lm": prefix_lm}), tiny_lm).eval()
    fmt = model.input_format()
    image = pool_images[0]

    def logits(question: str, answer: str) -> tuple[torch.Tensor, int]:
        turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        enc = fmt.encode(turns, [image])
        with torch.no_grad():
            return model(fmt.collate([enc])).logits[0], enc.prefix_len

    base, prefix = logits("Describe the picture", "a red apple")
    other_answer, _ = logits("Describe the picture", "a blue car")
    other_prompt, _ = logits("Describe the pictures", "a red apple")
    assert torch.allclose(base[:prefix], other_answer[:prefix], atol=1e-5)  # the answer stays unseen
    image_token = int((fmt.collate([fmt.encode([{"from": "human", "value": "<image>\nx"},
                                                 {"from": "gpt", "value": "y"}], [image])])["input_ids"][0]
                       == model.image_token_id).nonzero()[0])
    changed = (base[image_token] - other_prompt[image_token]).abs().max() > 1e-4
    assert bool(changed) == prefix_lm  # an image token sees the last prompt word only with prefix-LM
    assert model.lm_mask(torch.ones(1, 5, dtype=torch.long), torch.tensor([3])).dim() == (4 if prefix_lm else 2)


def test_frozen_tower_takes_the_configured_layer(clip_checkpoint):
    from curate.models.clip import load_checkpoint as load_clip

    visual = load_clip(clip_checkpoint)[0].model.visual
    tower = VisionTower(load_clip(clip_checkpoint)[0].model.visual, 0)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = visual.transformer.resblocks[0](visual._embeds(pixels))[:, 1:]
    assert torch.allclose(tower(pixels), expected, atol=1e-6)
    assert len(tower.visual.transformer.resblocks) == 1  # later blocks pruned
    assert not any(p.requires_grad for p in tower.parameters())


def test_checkpoint_rebuilds_the_model(llava, llava_checkpoint, pool_images, clip_checkpoint):
    model, rest = load_checkpoint(llava_checkpoint)
    assert isinstance(model, Llava) and rest["kind"] == "llava"
    fmt = llava.input_format()
    batch = fmt.collate([fmt.encode([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a b"}], [i])
                         for i in pool_images[:2]])
    with torch.no_grad():
        assert torch.equal(model(batch).loss, llava(batch).loss)
    with pytest.raises(ValueError, match="is not a LLaVA checkpoint"):
        load_checkpoint(clip_checkpoint)
