"""Training data: stage 1's caption pairs from curated shards and stage 2's conversations in
LLaVA-Instruct JSON/JSONL (records in memory, images read when used), both streamed by
train.data in a seeded order that a resumed run repeats."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from curate.models.llava.format import IMAGE, Encoded, LlavaFormat
from train.data import Pair, RecordSource, ShardSource, StreamLoader, StreamSettings


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


def caption_pair(pair: Pair, prompt: str) -> Sample:
    """Stage 1: a curated sample as `<image>\\n{prompt}` answered by its caption."""
    return Sample([{"from": "human", "value": f"{IMAGE}\n{prompt}"}, {"from": "gpt", "value": pair.text}],
                  [pair.image], f"uid {pair.uid}")


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


class LlavaTransform:
    """A sample encoded for the model (stage 1: a shard's pair as a caption conversation)."""

    def __init__(self, fmt: LlavaFormat, prompt: str):
        self.format, self.prompt = fmt, prompt

    def __call__(self, sample: Pair | Sample, g: int) -> Encoded:
        if isinstance(sample, Pair):
            sample = caption_pair(sample, self.prompt)
        return self.format.encode(sample.conversation, sample.open_images(), sample.source)


def llava_source(stage: int, data: str) -> ShardSource | RecordSource:
    """Stage 1: the curated shards at `data`; stage 2: the conversations of a LLaVA-Instruct file."""
    if stage == 1:
        return ShardSource(data)
    return RecordSource(load_conversations(data), str(data))


def source_texts(source: ShardSource | RecordSource) -> Iterator[str]:
    """Every turn's text (stage 1: every caption), for training a tokenizer on the data."""
    if isinstance(source, ShardSource):
        return source.texts()
    return (turn["value"] for sample in source.records for turn in sample.conversation)


def llava_loader(source: ShardSource | RecordSource, fmt: LlavaFormat, prompt: str, settings: StreamSettings,
                 rank: int, world_size: int) -> StreamLoader:
    """One rank's collated micro-batches streamed from `source` (samples collated by the rank, since
    each batch is padded to its longest sample)."""
    return StreamLoader(source, settings, rank, world_size, LlavaTransform(fmt, prompt), fmt.collate)
