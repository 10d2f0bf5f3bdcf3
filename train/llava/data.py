"""Training data: stage 1's caption pairs from curated shards (read through curate.io) and
stage 2's conversations in LLaVA-Instruct JSON/JSONL, served in a seeded order that a
resumed run repeats."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from train.clip.data import ClipBatches, load_samples
from train.llava.format import IMAGE, LlavaFormat


@dataclass(frozen=True)
class Sample:
    """One training sample: LLaVA-Instruct turns, its images (encoded bytes or file paths, one
    per `<image>` placeholder) and where it came from (for error messages)."""

    conversation: list[dict]
    images: list[bytes | Path]
    source: str

    def open_images(self) -> list[Image.Image]:
        """The images, opened (decoded when used, so a JPEG can be decoded at a reduced scale)."""
        try:
            return [Image.open(io.BytesIO(i) if isinstance(i, bytes) else i) for i in self.images]
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.source}: unreadable image: {exc}") from exc


def caption_pairs(path: str | Path, prompt: str) -> list[Sample]:
    """Stage 1: every curated sample as `<image>\\n{prompt}` answered by its caption."""
    table = load_samples(path)
    return [Sample([{"from": "human", "value": f"{IMAGE}\n{prompt}"}, {"from": "gpt", "value": text}], [image],
                   f"{path}: uid {uid}")
            for uid, text, image in zip(table["uid"].to_pylist(), table["text"].to_pylist(),
                                        table["image"].to_pylist())]


def _records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON{'L' if path.suffix == '.jsonl' else ''}: {exc}") from exc
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records (LLaVA-Instruct), got {type(records).__name__}")
    return records


def load_conversations(path: str | Path) -> list[Sample]:
    """Stage 2: a LLaVA-Instruct JSON list or JSONL file (or a folder holding train.json) of
    `{"id", "image" | "images", "conversations": [{"from", "value"}, ...]}`; image paths are
    relative to the file's folder. A record with `image` and no `<image>` placeholder gets
    it before its first turn."""
    path = Path(path)
    if path.is_dir():
        path = path / "train.json"
    if not path.is_file():
        raise FileNotFoundError(f"conversations {path} not found (a LLaVA-Instruct .json/.jsonl file or a folder "
                                f"with train.json)")
    samples = []
    for number, record in enumerate(_records(path)):
        where = f"{path}: record {number}" + (f" (id {record['id']!r})" if isinstance(record, dict)
                                              and "id" in record else "")
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
            raise ValueError(f"{where}: expected 'conversations', a non-empty list of {{from, value}} turns")
        names = record.get("images", [record["image"]] if "image" in record else [])
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}: expected 'image' (a path) or 'images' (a list of paths)")
        images = [path.parent / name for name in names]
        missing = [str(i) for i in images if not i.is_file()]
        if missing:
            raise FileNotFoundError(f"{where}: image file(s) not found: {', '.join(missing)}")
        if images and not any(IMAGE in str(t.get("value", "")) for t in turns):
            turns = [{**turns[0], "value": IMAGE * len(images) + "\n" + str(turns[0].get("value", ""))}, *turns[1:]]
        samples.append(Sample(turns, images, where))
    if not samples:
        raise ValueError(f"{path}: no conversations to train on")
    return samples


class LlavaBatches(ClipBatches):
    """Collated micro-batches for one rank, in the CLIP trainer's seeded order (global sample g is
    row perm_e[g mod N] of epoch e; a rank's micro-batch is a contiguous slice of the step)."""

    def __init__(self, samples: list[Sample], fmt: LlavaFormat, batch_size: int, grad_accum: int, rank: int,
                 world_size: int, seed: int):
        if batch_size % (grad_accum * world_size):
            raise ValueError(f"batch_size {batch_size} is not divisible by grad_accum x ranks = "
                             f"{grad_accum * world_size}")
        self.images = samples  # what ClipBatches.row counts and permutes
        self.format = fmt
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.micro = batch_size // (grad_accum * world_size)
        self._perms = {}

    def micro_batch(self, index: int) -> dict[str, torch.Tensor]:
        """This rank's micro-batch number `index` (grad_accum of them per optimizer step)."""
        step, micro = divmod(index, self.grad_accum)
        first = step * self.batch_size + (micro * self.world_size + self.rank) * self.micro
        samples = [self.images[self.row(g)] for g in range(first, first + self.micro)]
        return self.format.collate([self.format.encode(s.conversation, s.open_images(), s.source) for s in samples])
