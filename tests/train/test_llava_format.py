"""The LLaVA input format on real pool images: a collated batch decodes back to the chat
template, image tokens with region markers, left padding, masks and labels as specified."""

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from curate.models.llava.config import LlavaModelConfig
from curate.models.llava.format import IGNORE
from curate.models.llava.tokens import special_tokens
from train.llava.build import build_llava

K = 4  # image tokens per region: clip-tiny's 4x4 patches after a 2x2 pixel shuffle


def expected_image(image: Image.Image) -> str:
    """The tokens standing for an image, written out from the spec (regions of 128 source px, at most 4x4)."""
    rows, cols = (min(4, max(1, math.ceil(side / 128))) for side in (image.height, image.width))
    text = "<global_img>" + "<image>" * K
    if rows * cols > 1:
        text += "".join(f"<row_{r}_col_{c}>" + "<image>" * K for r in range(1, rows + 1) for c in range(1, cols + 1))
    return text


def expected_text(conversation, images) -> str:
    images = iter(images)
    out = ""
    for turn in conversation:
        role = "user" if turn["from"] == "human" else "assistant"
        value = turn["value"]
        while "<image>" in value:
            value = value.replace("<image>", "\0", 1)
        value = "".join(expected_image(next(images)) if ch == "\0" else ch for ch in value)
        out += f"<im_start>{role}\n{value}<im_end>\n"
    return out


@pytest.fixture(scope="module")
def samples(pool_table, pool_images):
    images = pool_images[:3]
    small = images[0].resize((100, 60))  # one region: global view only
    captions = [t.strip() or "a drawing" for t in pool_table["text"].to_pylist()[:3]]
    return [
        ([{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": captions[0]},
          {"from": "human", "value": "Say it again."}, {"from": "gpt", "value": captions[0] + " again"}], [images[0]]),
        ([{"from": "human", "value": "<image>\nFirst."}, {"from": "gpt", "value": "ok"},
          {"from": "human", "value": "<image> and <image>\nCompare."}, {"from": "gpt", "value": captions[1]}],
         [images[1], images[2], small]),
        ([{"from": "human", "value": "<image>\nCaption?"}, {"from": "gpt", "value": "tiny"}], [small]),
    ]


def test_a_batch_decodes_to_the_format(llava, samples):
    tokenizer, fmt = llava.tokenizer, llava.input_format()
    for token in special_tokens(4):  # added, and the LM has embeddings for them
        assert tokenizer.convert_tokens_to_ids(token) < llava.lm.get_input_embeddings().num_embeddings
        assert tokenizer.decode([tokenizer.convert_tokens_to_ids(token)]) == token
    assert llava.lm.get_input_embeddings().num_embeddings == len(tokenizer)
    grids = {(min(4, math.ceil(i.height / 128)), min(4, math.ceil(i.width / 128))) for _, imgs in samples for i in imgs}
    assert (1, 1) in grids and any(r * c > 1 for r, c in grids)  # both kinds of image are checked

    batch = fmt.collate([fmt.encode(conv, imgs) for conv, imgs in samples])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    end = tokenizer.convert_tokens_to_ids("<im_end>")
    length = ids.shape[1]
    for row, (conversation, images) in enumerate(samples):
        text = expected_text(conversation, images)
        real = int(mask[row].sum())
        pad = length - real
        # left padding with <im_end>, masked; nothing else masked
        assert ids[row, :pad].tolist() == [end] * pad
        assert mask[row].tolist() == [0] * pad + [1] * real
        assert batch["position_ids"][row, pad:].tolist() == list(range(real))
        assert tokenizer.decode(ids[row, pad:], clean_up_tokenization_spaces=False) == text
        # labels: -100 except the assistant's answers, each with its closing <im_end>
        answers = "".join(t["value"] + "<im_end>" for t in conversation if t["from"] == "gpt")
        labelled = labels[row] != IGNORE
        assert tokenizer.decode(labels[row][labelled], clean_up_tokenization_spaces=False) == answers
        assert torch.equal(labels[row][labelled], ids[row][labelled])
        first = int(labelled.nonzero()[0])
        assert tokenizer.decode(ids[row, pad:first], clean_up_tokenization_spaces=False).endswith(
            "<im_start>assistant\n")
        assert int(batch["prefix_len"][row]) == first - pad
    assert min(int(m.sum()) for m in mask) < length  # some row really is padded
    # every view of every image, in token order: image-token count matches the views
    views = sum(1 + (r * c if r * c > 1 else 0) for _, imgs in samples for i in imgs
                for r, c in [(min(4, math.ceil(i.height / 128)), min(4, math.ceil(i.width / 128)))])
    assert batch["pixel_values"].shape == (views, 3, 64, 64)
    assert int((ids == tokenizer.convert_tokens_to_ids("<image>")).sum()) == views * K
    first_image = samples[0][1][0]
    global_view = TF.normalize(TF.to_tensor(first_image.resize((64, 64), Image.Resampling.BICUBIC, reducing_gap=3.0)),
                               llava.vision.mean, llava.vision.std)
    assert torch.allclose(batch["pixel_values"][0], global_view)


def test_configured_pad_token_and_multiple(llava, llava_model_config, tiny_lm, samples):
    config = {**llava_model_config, "pad_token": "<global_img>", "pad_to_multiple": 64}
    model = build_llava(LlavaModelConfig(**config), tiny_lm)
    model.load_state_dict(llava.state_dict())
    fmt = model.input_format()
    batch = fmt.collate([fmt.encode(conv, imgs) for conv, imgs in samples])
    pad = model.tokenizer.convert_tokens_to_ids("<global_img>")
    assert batch["input_ids"][batch["attention_mask"] == 0].unique().tolist() == [pad]
    assert batch["input_ids"].shape[1] % 64 == 0 and batch["pixel_values"].shape[0] % 64 == 0
    # the extra padding and blank views change nothing the model computes on real tokens
    plain = llava.input_format()
    plain_batch = plain.collate([plain.encode(conv, imgs) for conv, imgs in samples])
    assert batch["pixel_values"].shape[0] > plain_batch["pixel_values"].shape[0]
    with torch.no_grad():
        ours, reference = model(batch), llava(plain_batch)
    assert torch.allclose(ours.loss, reference.loss, atol=1e-5)
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours.logits[real], reference.logits[plain_batch["attention_mask"].bool()], atol=1e-4)


def test_bad_conversations_name_the_sample(llava, samples):
    fmt = llava.input_format()
    conversation, images = samples[1]
    with pytest.raises(ValueError, match="rec7: 3 <image> placeholder.*but 2 image"):
        fmt.encode(conversation, images[:2], "rec7")
    with pytest.raises(ValueError, match="rec8: turn 1: expected 'from'"):
        fmt.encode([conversation[0], {"from": "bot", "value": "x"}], images[:1], "rec8")
    with pytest.raises(ValueError, match="rec9: no assistant turn"):
        fmt.encode(conversation[:1], images[:1], "rec9")
