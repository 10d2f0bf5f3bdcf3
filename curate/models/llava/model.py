"""The LLaVA model: a frozen open_clip vision tower (patch tokens of one layer), an MLP
projector (LLaVA-1.5: two layers with GELU; optional nanoVLM pixel shuffle) and any Hugging
Face causal LM (train/llava/build.py builds one to train).

A checkpoint holds everything needed to rebuild the model without the files it came from:
`kind: "llava"`, the model config, the LM's config, the tokenizer's files and all weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from curate.io.writers import atomic
from curate.models.checkpoint import load_torch_file
from curate.models.clip import create_clip
from curate.models.llava.config import LlavaModelConfig
from curate.models.llava.format import ImageSplitter, LlavaFormat
from curate.models.llava.tokens import IMAGE

KIND = "llava"


class VisionTower(torch.nn.Module):
    """An open_clip ViT cut after block `layer`, returning that block's patch tokens (no CLS);
    frozen and always in eval mode."""

    def __init__(self, visual: torch.nn.Module, layer: int):
        super().__init__()
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "grid_size"):
            raise ValueError(f"vision tower {type(visual).__name__} is not an open_clip ViT (patch tokens needed)")
        self.index = layer % len(visual.transformer.resblocks)
        visual.prune_intermediate_layers([self.index])  # blocks after the chosen one never run
        self.visual = visual.eval().requires_grad_(False)
        self.width = visual.transformer.width
        self.grid = visual.grid_size[0]
        self.image_size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        self.mean, self.std = visual.preprocess_cfg["mean"], visual.preprocess_cfg["std"]

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(pixels, indices=[self.index], intermediates_only=True,
                                                output_fmt="NLC")
        return out["image_intermediates"][0]


def pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, H*W, C) patch tokens -> (B, H*W/s^2, C*s^2): each s x s block of neighbours becomes one token."""
    if scale == 1:
        return x
    batch, seq, dim = x.shape
    side = int(seq ** 0.5)
    x = x.reshape(batch, side // scale, scale, side // scale, scale, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, seq // scale**2, dim * scale**2)


class Projector(torch.nn.Module):
    """Pixel shuffle, then LLaVA-1.5's two-layer MLP with GELU into the LM's embedding space."""

    def __init__(self, vision_width: int, lm_width: int, shuffle: int):
        super().__init__()
        self.shuffle = shuffle
        self.mlp = torch.nn.Sequential(torch.nn.Linear(vision_width * shuffle**2, lm_width), torch.nn.GELU(),
                                       torch.nn.Linear(lm_width, lm_width))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.mlp(pixel_shuffle(patches, self.shuffle))


def prefix_lm_mask(attention_mask: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
    """PaliGemma's mask, (B, 1, T, T) bool, True = may attend: tokens of the prefix (the first
    `prefix_len` non-padding tokens: images and prompt) see the whole prefix, later tokens see
    what precedes them; padding keys are hidden (a padding query sees only itself, so no row is empty)."""
    length = attention_mask.shape[1]
    idx = torch.arange(length, device=attention_mask.device)
    starts = length - attention_mask.sum(1)  # left padding
    in_prefix = (idx[None, :] >= starts[:, None]) & (idx[None, :] < (starts + prefix_len)[:, None])
    mask = (idx[None, :, None] >= idx[None, None, :]) | (in_prefix[:, :, None] & in_prefix[:, None, :])
    mask &= attention_mask.bool()[:, None, :]
    mask |= torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    return mask[:, None]


class Llava(torch.nn.Module):
    """Vision tower -> projector -> causal LM; image token positions take the projected patches."""

    def __init__(self, vision: VisionTower, lm: torch.nn.Module, tokenizer, spec: dict):
        super().__init__()
        config = LlavaModelConfig.model_validate(spec["model"])
        self.vision, self.lm, self.tokenizer, self.spec = vision, lm, tokenizer, spec
        self.projector = Projector(vision.width, lm.get_input_embeddings().embedding_dim, config.pixel_shuffle)
        if vision.grid % config.pixel_shuffle:
            raise ValueError(f"pixel_shuffle {config.pixel_shuffle} does not divide the tower's {vision.grid} "
                             f"x {vision.grid} patch grid")
        self.tokens_per_region = (vision.grid // config.pixel_shuffle) ** 2
        self.prefix_lm = config.prefix_lm
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)

    def input_format(self) -> LlavaFormat:
        """The input format this model was built for (region grid, tokens per region, padding)."""
        config = LlavaModelConfig.model_validate(self.spec["model"])
        size = self.vision.image_size
        splitter = ImageSplitter(size, config.region_size or size, config.max_grid, self.vision.mean, self.vision.std)
        return LlavaFormat(self.tokenizer, splitter, self.tokens_per_region, config.pad_token, config.pad_to_multiple)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Token embeddings with every image token replaced, in order, by a projected patch
        (`LlavaFormat.collate` checks that the counts match; patches of trailing blank views
        are left over and unused)."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        if pixel_values.numel() == 0:
            return embeds
        features = self.projector(self.vision(pixel_values)).reshape(-1, embeds.shape[-1])
        return embeds.masked_scatter(slots[..., None], features.to(embeds.dtype))

    def lm_mask(self, attention_mask: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
        """The mask handed to the LM: the 2-D padding mask, or the 4-D prefix-LM mask."""
        if not self.prefix_lm:
            return attention_mask
        mask = prefix_lm_mask(attention_mask, prefix_len)
        if self.lm.config._attn_implementation == "eager":  # eager attention adds its mask
            return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
                ~mask, torch.finfo(torch.float32).min)
        return mask

    def forward(self, batch: dict[str, torch.Tensor]):
        """The LM's output for a collated batch; its `loss` is the mean over labelled tokens, or
        their sum over `num_items_in_batch` when the batch holds that."""
        embeds = self.embed(batch["input_ids"], batch["pixel_values"])
        extra = {"num_items_in_batch": batch["num_items_in_batch"]} if "num_items_in_batch" in batch else {}
        return self.lm(inputs_embeds=embeds, attention_mask=self.lm_mask(batch["attention_mask"], batch["prefix_len"]),
                       position_ids=batch["position_ids"], labels=batch.get("labels"), use_cache=False, **extra)


def _tokenizer_files(tokenizer) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def save_checkpoint(path: str | Path, model: Llava, **extra: Any) -> None:
    """Write the model (weights, spec, LM config, tokenizer files) plus `extra` atomically."""
    model = model.module if hasattr(model, "module") else model
    data = {"kind": KIND, "spec": model.spec, "lm_config": model.lm.config.to_dict(),
            "tokenizer": _tokenizer_files(model.tokenizer), "state_dict": model.state_dict(), **extra}
    with atomic(Path(path)) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Llava, dict]:
    """Rebuild a model from a LLaVA checkpoint alone; returns it and the checkpoint's other
    contents (config, step, optimizer, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        data = load_torch_file(path, "a LLaVA checkpoint")
    except (RuntimeError, EOFError) as exc:  # torch raises zip and runtime errors on foreign files
        raise ValueError(f"{path} is not a LLaVA checkpoint (not a torch file: {exc})") from exc
    if not isinstance(data, dict) or data.get("kind") != KIND:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise ValueError(f"{path} is not a LLaVA checkpoint (kind {kind!r})")
    spec = data["spec"]
    config = LlavaModelConfig.model_validate(spec["model"])
    visual = create_clip(spec["vision_model"]).model.visual
    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in data["tokenizer"].items():
            Path(tmp, name).write_bytes(blob)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    lm_config = dict(data["lm_config"])
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**lm_config), dtype=torch.float32)
    model = Llava(VisionTower(visual, config.vision_layer), lm, tokenizer, spec)
    model.load_state_dict(data["state_dict"])
    rest = {k: v for k, v in data.items() if k not in ("state_dict", "tokenizer", "lm_config", "spec")}
    return model.to(device), rest
