"""Building a LLaVA model to train: the vision tower from a CLIP checkpoint or an open_clip
model, the LM from a Hugging Face folder. The tiny CPU LM is built from a config JSON and
written as such a folder first, so it loads through the very same path."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from curate.models.clip import MODEL_CONFIGS, create_clip
from curate.models.clip import load_checkpoint as load_clip_checkpoint
from curate.models.llava.config import LlavaModelConfig
from curate.models.llava.model import Llava, VisionTower
from curate.models.llava.tokens import IM_END, add_special_tokens
from train.llava.tokenizer import train_tokenizer


def _load_vision(config: LlavaModelConfig, device) -> tuple[torch.nn.Module, str]:
    if Path(config.vision).is_file():
        clip, _ = load_clip_checkpoint(config.vision, device=str(device))
    else:
        clip = create_clip(config.vision, config.vision_pretrained, device)
    return clip.model.visual, clip.name


def build_tiny_lm(lm_config: str | Path, captions: Iterable[str], vocab_size: int, max_grid: int,
                  out_dir: Path) -> Path:
    """Write a Hugging Face model folder: the architecture of config JSON `lm_config` (a file, or a
    name in curate/models/configs) with random weights, and a BPE tokenizer trained on `captions`
    (the stand-in for a pretrained LM where none can be downloaded). Returns the folder, which
    loads like any other."""
    path = Path(lm_config) if Path(lm_config).is_file() else MODEL_CONFIGS / f"{lm_config}.json"
    if not path.is_file():
        raise FileNotFoundError(f"LM config {lm_config!r} not found (a JSON file, or one of "
                                f"{sorted(p.stem for p in MODEL_CONFIGS.glob('*.json'))})")
    raw = json.loads(path.read_text())
    tokenizer = train_tokenizer(captions, vocab_size, max_grid)
    end = tokenizer.convert_tokens_to_ids(IM_END)
    config = AutoConfig.for_model(**{**raw, "vocab_size": len(tokenizer), "bos_token_id": end,
                                     "eos_token_id": end, "pad_token_id": end})
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_llava(config: LlavaModelConfig, lm_path: str | Path, device: str | torch.device = "cpu") -> Llava:
    """The model for `config`, its LM and tokenizer from the Hugging Face folder `lm_path`
    (special tokens added, embeddings resized)."""
    visual, vision_name = _load_vision(config, device)
    tokenizer = add_special_tokens(AutoTokenizer.from_pretrained(lm_path), config.max_grid)
    lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=torch.float32)
    if lm.get_input_embeddings().num_embeddings < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer))
    spec = {"model": config.model_dump(), "vision_model": vision_name}
    return Llava(VisionTower(visual, config.vision_layer), lm, tokenizer, spec).to(device)
