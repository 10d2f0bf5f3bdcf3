"""CLIP models from open_clip's factory, the project's tiny configs, and checkpoints: what the
CLIP scorer of the embedding stages loads and what `curate train clip` trains and writes.

Any open_clip model name works; `curate/models/configs/*.json` adds CPU-sized configs
(e.g. `clip-tiny`). Weights never come from a hub: a model starts random or from a local
file (`pretrained: PATH`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from curate.io.writers import atomic
from curate.models.checkpoint import load_torch_file

MODEL_CONFIGS = Path(__file__).resolve().parent / "configs"
open_clip.add_model_config(MODEL_CONFIGS)


@dataclass
class Clip:
    """A CLIP model with the image transforms and tokenizer that go with it."""

    name: str
    model: torch.nn.Module
    preprocess_train: Any
    preprocess: Any
    tokenizer: Any


def create_clip(name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
                siglip: bool = False) -> Clip:
    """Build open_clip model `name`; `pretrained` is a local weights file or None (random init).
    `siglip` adds SigLIP's learned logit bias (initial scale 10, bias -10)."""
    if name not in open_clip.list_models():
        raise ValueError(f"unknown model {name!r}: use an open_clip model name or one of "
                         f"{sorted(p.stem for p in MODEL_CONFIGS.glob('*.json'))}")
    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained weights {pretrained!r} not found (no hub downloads: give a local file)")
    extra = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0} if siglip else {}
    model, preprocess_train, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device, output_dict=True, **extra)
    return Clip(name, model, preprocess_train, preprocess, open_clip.get_tokenizer(name))


def save_checkpoint(path: str | Path, clip: Clip, **extra: Any) -> None:
    """Write model weights and name (plus training state in `extra`) atomically."""
    model = clip.model.module if hasattr(clip.model, "module") else clip.model
    with atomic(Path(path)) as tmp:
        torch.save({"model_name": clip.name, "state_dict": model.state_dict(), **extra}, tmp)


def load_checkpoint(path: str | Path, model_name: str | None = None, device: str = "cpu") -> tuple[Clip, dict]:
    """A model from one of this project's checkpoints (its name is inside) or from an open_clip
    pretrained file, .safetensors or torch (then `model_name` says which architecture). Returns the
    model and the checkpoint's other contents (step, config, ...). Torch files load weights-only: one
    that names any other object is refused (curate.models.checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":  # tensors only by format: open_clip reads it
        data = None
    else:
        data = load_torch_file(path, "a curate CLIP checkpoint or open_clip weights file", map_location=device)
    if isinstance(data, dict) and "model_name" in data and "state_dict" in data:
        siglip = "logit_bias" in data["state_dict"]
        clip = create_clip(model_name or data["model_name"], device=device, siglip=siglip)
        clip.model.load_state_dict(data["state_dict"])
        return clip, {k: v for k, v in data.items() if k != "state_dict"}
    if model_name is None:
        raise ValueError(f"{path} is not a curate checkpoint; pass the open_clip model name it was trained as")
    return create_clip(model_name, pretrained=str(path), device=device), {}
