"""Fixtures the trainer tests share (LLaVA): a tiny LM folder (config + tokenizer trained on
the test pool's captions), a model on a clip-tiny tower, its checkpoint, real pool images
and a LLaVA-Instruct file."""

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from curate.models.llava.config import LlavaModelConfig
from curate.models.llava.model import save_checkpoint
from train.llava.build import build_llava, build_tiny_lm


@pytest.fixture(scope="session")
def tiny_lm(pool_table, tmp_path_factory) -> Path:
    """A Hugging Face model folder: 2-layer Llama, random weights, BPE on the pool's captions."""
    torch.manual_seed(0)
    return build_tiny_lm("llava-lm-tiny", pool_table["text"].to_pylist(), 512, 4, tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="session")
def llava_model_config(clip_checkpoint, tiny_lm) -> dict:
    """The model section of a config: clip-tiny checkpoint tower, 2x2 pixel shuffle, grids up to 4x4."""
    return {"vision": str(clip_checkpoint), "lm": str(tiny_lm), "pixel_shuffle": 2, "max_grid": 4,
            "region_size": 128}


@pytest.fixture(scope="session")
def llava(llava_model_config, tiny_lm):
    """The tiny LLaVA model (random projector, seed 0)."""
    torch.manual_seed(0)
    return build_llava(LlavaModelConfig(**llava_model_config), tiny_lm)


@pytest.fixture(scope="session")
def llava_checkpoint(llava, tmp_path_factory) -> Path:
    """The tiny model as a LLaVA checkpoint."""
    path = tmp_path_factory.mktemp("llava") / "last.pt"
    save_checkpoint(path, llava)
    return path


@pytest.fixture(scope="session")
def pool_images(pool_table) -> list[Image.Image]:
    """The first 8 real pool images, decoded."""
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in pool_table["image"].to_pylist()[:8]]


@pytest.fixture(scope="session")
def conversations(pool_table, tmp_path_factory) -> Path:
    """A LLaVA-Instruct JSON file over real pool images: one-image records with two turns, a
    two-image record, and a record with `image` and no placeholder."""
    root = tmp_path_factory.mktemp("conversations")
    (root / "images").mkdir()
    records = []
    for i, (uid, text, image) in enumerate(zip(*(pool_table[c].to_pylist()[:12] for c in ("uid", "text", "image")))):
        (root / "images" / f"{uid}.jpg").write_bytes(image)
        answer = text.strip() or "a drawing"
        turns = [{"from": "human", "value": "<image>\nWhat is the title of this drawing?"},
                 {"from": "gpt", "value": answer},
                 {"from": "human", "value": "How many words is the title?"},
                 {"from": "gpt", "value": str(len(answer.split()))}]
        records.append({"id": uid, "image": f"images/{uid}.jpg", "conversations": turns if i % 3 else turns[:2]})
    first, second = records[0]["image"], records[1]["image"]
    records.append({"id": "pair", "images": [first, second], "conversations": [
        {"from": "human", "value": "<image>\nFirst drawing."}, {"from": "gpt", "value": "Seen."},
        {"from": "human", "value": "<image>\nAre the two the same?"}, {"from": "gpt", "value": "No."}]})
    records.append({"id": "bare", "image": first, "conversations": [
        {"from": "human", "value": "Describe it."}, {"from": "gpt", "value": records[0]["conversations"][1]["value"]}]})
    (root / "train.json").write_text(json.dumps(records))
    return root
