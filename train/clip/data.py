"""Training data: the shards `curate run` writes, read through curate.io, served in a
deterministic order so a run and its resumption see the same samples."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from curate.io.readers import plan_inputs, read_task


def load_samples(path: str | Path) -> pa.Table:
    """uid, text and image of every sample in a curated output folder (its parquet/ parts,
    else its shards/) or in the given Parquet/tar files, in a stable order."""
    path = Path(path)
    for sub in ("parquet", "shards"):
        if (path / sub).is_dir():
            path = path / sub
            break
    tables = []
    for task in plan_inputs([str(path)]):
        for verdict in read_task(task, 4096):
            kept, _ = verdict.split("read")  # a sample cut off in a tar is not trained on
            tables.append(kept.select(["uid", "text", "image"]))
    table = pa.concat_tables(tables)
    usable = pa.array([bool(i) and t is not None for i, t in zip(table["image"].to_pylist(), table["text"].to_pylist())])
    table = table.filter(usable)
    if table.num_rows == 0:
        raise ValueError(f"{path}: no samples with an image and a caption to train on")
    return table


class ClipBatches:
    """Micro-batches of (images, tokens) for one rank, in an order fixed by the seed.

    Global sample g (counted from the first step) is row perm_e[g mod N] of the data,
    where perm_e is the seeded permutation of epoch e = g // N. Each optimizer step takes
    the next `batch_size` global samples; rank r's micro-batch m is a contiguous slice.
    A sample's augmentation is seeded by g, so resuming at a step reproduces the stream.
    """

    def __init__(self, samples: pa.Table, preprocess, tokenizer, batch_size: int, grad_accum: int,
                 rank: int, world_size: int, seed: int, image_size: int):
        if batch_size % (grad_accum * world_size):
            raise ValueError(f"batch_size {batch_size} is not divisible by grad_accum x ranks = {grad_accum * world_size}")
        self.images = samples["image"].to_pylist()
        self.texts = samples["text"].to_pylist()
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.micro = batch_size // (grad_accum * world_size)
        self.image_size = image_size
        self._perms: dict[int, np.ndarray] = {}

    def row(self, g: int) -> int:
        """The data row of global sample g."""
        n = len(self.images)
        epoch = g // n
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n)}
        return int(self._perms[epoch][g % n])

    def _sample(self, g: int) -> tuple[torch.Tensor, str]:
        row = self.row(g)
        with Image.open(io.BytesIO(self.images[row])) as im, torch.random.fork_rng(devices=[]):  # CPU only
            # JPEG: decode at the smallest DCT scale still twice the model's input (much less work)
            im.draft("RGB", (2 * self.image_size, 2 * self.image_size))
            torch.manual_seed(self.seed * 1_000_003 + g)
            return self.preprocess(im.convert("RGB")), self.texts[row]

    def micro_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's micro-batch number `index` (grad_accum of them per optimizer step)."""
        step, micro = divmod(index, self.grad_accum)
        first = step * self.batch_size + (micro * self.world_size + self.rank) * self.micro
        pairs = [self._sample(g) for g in range(first, first + self.micro)]
        return torch.stack([p[0] for p in pairs]), self.tokenizer([p[1] for p in pairs])

    def from_step(self, step: int, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Micro-batches from optimizer step `step` on, forever; `workers` loader processes
        decode ahead of the training step, in the same order."""
        stream = _MicroBatchStream(self, step * self.grad_accum)
        if workers == 0:
            return iter(stream)
        return iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4,
                                                persistent_workers=True))


class _MicroBatchStream(torch.utils.data.IterableDataset):
    """Micro-batches from a start index on; loader worker w makes every n-th one, and the
    loader's round-robin over workers restores the order."""

    def __init__(self, batches: ClipBatches, start: int):
        self.batches, self.start = batches, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.start + worker
        while True:
            yield self.batches.micro_batch(index)
            index += workers
