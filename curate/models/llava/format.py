"""The input format (nanoVLM's, after the seeds): images split into regions, a user/assistant
chat template, left padding and labels on the assistant's answers only.

One turn is `<im_start>{role}\\n{content}<im_end>\\n` with role `user` or `assistant`. An
`<image>` placeholder in a user turn becomes the image's tokens: `<global_img>` and the
global view's image tokens, then, when the image was split, `<row_i_col_j>` and that
region's image tokens for each region. Labels are the assistant's content and its closing
`<im_end>` (so the model learns to stop); everything else is -100.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from curate.models.llava.tokens import GLOBAL_IMAGE, IM_END, IM_START, IMAGE, region_token

IGNORE = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PLACEHOLDER = re.compile(re.escape(IMAGE))


class ImageSplitter:
    """Resize and split an image into up to max_grid x max_grid regions of the tower's input size,
    plus a global view: a side of `region_size` source pixels or less makes one region."""

    def __init__(self, image_size: int, region_size: int, max_grid: int, mean, std):
        self.image_size, self.region_size, self.max_grid = image_size, region_size, max_grid
        self.mean, self.std = list(mean), list(std)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, cols) of regions for an image of this size."""
        def side(n: int) -> int:
            return max(1, min(self.max_grid, math.ceil(n / self.region_size)))
        return side(height), side(width)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """(global view + regions row by row, normalised, (n, 3, S, S)) and the (rows, cols) grid.
        A JPEG not decoded yet is decoded at the smallest scale the views need (`Image.draft`)."""
        rows, cols = self.grid(*image.size)
        size = self.image_size
        image.draft("RGB", (cols * size, rows * size))  # JPEG: decode at the smallest scale still large enough
        image = image.convert("RGB")
        views = self._tensor(image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0))[None]
        if rows * cols > 1:
            big = self._tensor(image.resize((cols * size, rows * size), Image.Resampling.BICUBIC, reducing_gap=3.0))
            regions = big.reshape(3, rows, size, cols, size).permute(1, 3, 0, 2, 4).reshape(-1, 3, size, size)
            views = torch.cat([views, regions])
        return views, (rows, cols)

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)


@dataclass
class Encoded:
    """One sample's token ids, labels, the length of its prefix (tokens before the first
    label: images and prompt) and its image views."""

    ids: list[int]
    labels: list[int]
    prefix_len: int
    pixels: torch.Tensor


class LlavaFormat:
    """Turns conversations with images into token ids and labels, and batches them."""

    def __init__(self, tokenizer, splitter: ImageSplitter, tokens_per_region: int, pad_token: str | None = None,
                 pad_to_multiple: int = 1):
        self.tokenizer, self.splitter, self.tokens_per_region = tokenizer, splitter, tokens_per_region
        self.pad_to_multiple = pad_to_multiple
        self.token = {t: tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_END, IMAGE, GLOBAL_IMAGE)}
        self.pad_id = tokenizer.convert_tokens_to_ids(pad_token or IM_END)
        if self.pad_id is None or self.pad_id == tokenizer.unk_token_id:
            raise ValueError(f"pad token {pad_token!r} is not in the tokenizer's vocabulary")
        self.eos_id = self.token[IM_END]
        # the template's fixed pieces, tokenised once
        self.header = {role: [self.token[IM_START], *self._text(f"{role}\n")] for role in set(ROLES.values())}
        self.end = [self.token[IM_END], *self._text("\n")]

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def image_ids(self, grid: tuple[int, int]) -> list[int]:
        """The tokens standing for one image split into `grid` (rows, cols) regions."""
        block = [self.token[IMAGE]] * self.tokens_per_region
        ids = [self.token[GLOBAL_IMAGE], *block]
        rows, cols = grid
        if rows * cols > 1:
            for r in range(rows):
                for c in range(cols):
                    ids += [self.tokenizer.convert_tokens_to_ids(region_token(r + 1, c + 1)), *block]
        return ids

    def encode(self, conversation: list[dict], images: list[Image.Image], source: str = "sample",
               generation: bool = False) -> Encoded:
        """A conversation (LLaVA-Instruct turns: `from` human/gpt, `value`) with one image per
        `<image>` placeholder, in order. `generation` ends the ids with the assistant's header
        (a prompt to continue) instead of requiring the last turn to be the assistant's."""
        placeholders = sum(len(PLACEHOLDER.findall(turn.get("value", ""))) for turn in conversation)
        if placeholders != len(images):
            raise ValueError(f"{source}: {placeholders} <image> placeholder(s) but {len(images)} image(s)")
        try:
            views = [self.splitter(image) for image in images]
        except OSError as exc:
            raise ValueError(f"{source}: unreadable image: {exc}") from exc
        ids: list[int] = []
        labels: list[int] = []
        next_image = iter(views)
        for number, turn in enumerate(conversation):
            role = ROLES.get(turn.get("from"))
            if role is None or not isinstance(turn.get("value"), str):
                raise ValueError(f"{source}: turn {number}: expected 'from' in {sorted(ROLES)} and a string "
                                 f"'value' (got {turn!r:.80})")
            content: list[int] = []
            for index, piece in enumerate(PLACEHOLDER.split(turn["value"])):
                if index:
                    content += self.image_ids(next(next_image)[1])
                content += self._text(piece)
            header, end = self.header[role], self.end
            answer = role == "assistant"
            ids += header + content + end
            labels += [IGNORE] * len(header) + (content + end[:1] if answer else [IGNORE] * (len(content) + 1)) \
                + [IGNORE] * (len(end) - 1)
        if generation:
            header = self.header["assistant"]
            ids += header
            labels += [IGNORE] * len(header)
        elif all(label == IGNORE for label in labels):
            raise ValueError(f"{source}: no assistant turn to learn from")
        prefix = next((i for i, label in enumerate(labels) if label != IGNORE), len(ids))
        pixels = torch.cat([v[0] for v in views]) if views else torch.empty(0)
        return Encoded(ids, labels, prefix, pixels)

    def collate(self, samples: list[Encoded]) -> dict[str, torch.Tensor]:
        """Left-pad to the longest sample (rounded up to `pad_to_multiple`) with the pad id:
        input_ids, attention_mask (0 on padding only), position_ids (counting from each sample's
        first token), labels, prefix_len and pixel_values (every image view, in token order, then
        blank views up to a multiple of `pad_to_multiple`)."""
        length = -(-max(len(s.ids) for s in samples) // self.pad_to_multiple) * self.pad_to_multiple
        ids = torch.full((len(samples), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            start = length - len(sample.ids)
            ids[row, start:] = torch.tensor(sample.ids)
            labels[row, start:] = torch.tensor(sample.labels)
            mask[row, start:] = 1
        pixels = [s.pixels for s in samples if s.pixels.numel()]
        size = self.splitter.image_size
        views = sum(p.shape[0] for p in pixels)
        if int((ids == self.token[IMAGE]).sum()) != views * self.tokens_per_region:
            raise ValueError(f"{int((ids == self.token[IMAGE]).sum())} image tokens for {views} image views of "
                             f"{self.tokens_per_region} tokens each (is {IMAGE} in a text?)")
        padded = -(-views // self.pad_to_multiple) * self.pad_to_multiple  # blank views at the end go unused
        pixels.append(torch.zeros(padded - views, 3, size, size))
        return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0),
                "labels": labels, "prefix_len": torch.tensor([s.prefix_len for s in samples]),
                "pixel_values": torch.cat(pixels)}
