"""CLIP training data: the curated shards' image-caption pairs, streamed by train.data, each
image augmented with a seed of its global index (so a resumed run repeats the stream)."""

from __future__ import annotations

import io

import torch
from PIL import Image

from curate.images import to_rgb
from train.data import Pair, ShardSource, StreamLoader, StreamSettings


class ClipTransform:
    """A pair's image ready for the model, through `preprocess` (JPEGs decoded at the smallest DCT
    scale still twice the input size), with its caption."""

    def __init__(self, preprocess, seed: int, image_size: int):
        self.preprocess, self.seed, self.image_size = preprocess, seed, image_size

    def __call__(self, pair: Pair, g: int) -> tuple[torch.Tensor, str]:
        try:
            with Image.open(io.BytesIO(pair.image)) as im, torch.random.fork_rng(devices=[]):
                im.draft("RGB", (2 * self.image_size, 2 * self.image_size))
                # the CPU generator only: torch.manual_seed would queue a CUDA seeding too (2 ms a call)
                torch.default_generator.manual_seed(self.seed * 1_000_003 + g)
                image = self.preprocess(to_rgb(im))
        except (OSError, ValueError) as exc:
            raise ValueError(f"sample {pair.uid}: unreadable image: {exc}") from exc
        return image, pair.text


class ClipCollate:
    """(images, tokens) of transformed pairs, the captions tokenized together."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([image for image, _ in items]), self.tokenizer([text for _, text in items])


def concat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of collated parts, in order."""
    return torch.cat([i for i, _ in parts]), torch.cat([t for _, t in parts])


def clip_loader(data: str, preprocess, tokenizer, image_size: int, settings: StreamSettings, rank: int,
                world_size: int) -> StreamLoader:
    """One rank's (images, tokens) micro-batches streamed from the shards at `data`."""
    transform = ClipTransform(preprocess, settings.seed, image_size)
    return StreamLoader(ShardSource(data), settings, rank, world_size, transform, ClipCollate(tokenizer), concat)
