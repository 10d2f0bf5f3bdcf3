"""CLIP training data: the curated shards' image-caption pairs, streamed by train.data, each
image augmented with a seed of its global index (so a resumed run repeats the stream)."""

from __future__ import annotations

import io

import torch
from PIL import Image

from train.data import Pair, ShardSource, StreamLoader, StreamSettings


class ClipTransform:
    """A pair ready for the model: the image through `preprocess` (JPEGs decoded at the smallest
    DCT scale still twice the input size), the caption as tokens."""

    def __init__(self, preprocess, tokenizer, seed: int, image_size: int):
        self.preprocess, self.tokenizer, self.seed, self.image_size = preprocess, tokenizer, seed, image_size

    def __call__(self, pair: Pair, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            with Image.open(io.BytesIO(pair.image)) as im, torch.random.fork_rng(devices=[]):  # CPU only
                im.draft("RGB", (2 * self.image_size, 2 * self.image_size))
                torch.manual_seed(self.seed * 1_000_003 + g)
                image = self.preprocess(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"sample {pair.uid}: unreadable image: {exc}") from exc
        return image, self.tokenizer([pair.text])[0]


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, tokens) of a list of transformed pairs."""
    return torch.stack([i for i, _ in items]), torch.stack([t for _, t in items])


def concat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of collated parts, in order."""
    return torch.cat([i for i, _ in parts]), torch.cat([t for _, t in parts])


def clip_loader(data: str, preprocess, tokenizer, image_size: int, settings: StreamSettings, rank: int,
                world_size: int) -> StreamLoader:
    """One rank's (images, tokens) micro-batches streamed from the shards at `data`."""
    transform = ClipTransform(preprocess, tokenizer, settings.seed, image_size)
    return StreamLoader(ShardSource(data), settings, rank, world_size, transform, collate, concat)
