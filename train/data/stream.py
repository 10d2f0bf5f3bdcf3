"""Micro-batches streamed from a source's shards, in the order of train.data.order, for one rank.

A rank serves lanes/ranks lanes; its loader workers split them (worker w of W reads a contiguous
range of them and makes their part of every micro-batch), so a process holds only its lanes'
shuffle blocks and the shard being read. The micro-batch of a step is the same with 0, 1 or more
workers and on any number of ranks: the lanes, not the workers, fix the order. A sample's
transform (augmentation) is seeded by its global index.

Resume: a lane's state is (block, shard index, offset): where the block holding its next sample
starts. A checkpoint keeps every lane's; a resumed lane opens that shard, skips to that offset,
reads the block and serves it from the position the step gives (at most one block is read again).
Without a state a lane reaches its position by reading its shards from the start, decoding nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from train.config import TrainConfig
from train.data.order import Order

Location = tuple[int, int]  # (index into the lane's shard sequence, usable samples to skip in that shard)


class Source(Protocol):
    """Shards and how to read one (train.data.sources)."""

    shards: list[str]
    fingerprint: str

    def read(self, index: int, skip: int = 0) -> Iterator[Any]:
        """The usable samples of shard `index` after the first `skip`, in a fixed order."""


@dataclass(frozen=True)
class StreamSettings:
    """What fixes the order (lanes, block, seed, resampling) and how a rank serves it."""

    batch_size: int  # global, per optimizer step
    grad_accum: int
    lanes: int
    block: int
    seed: int
    resampled: bool = False
    workers: int = 0
    prefetch: int = 4  # micro-batch parts each loader worker makes ahead

    @classmethod
    def from_config(cls, config: TrainConfig) -> StreamSettings:
        """The settings a trainer's config sets."""
        return cls(batch_size=config.batch_size, grad_accum=config.grad_accum, lanes=config.lanes,
                   block=config.shuffle_block, seed=config.seed, resampled=config.resampled, workers=config.workers)

    @property
    def micro(self) -> int:
        """Samples in a global micro-batch."""
        return self.batch_size // self.grad_accum

    @property
    def per_lane(self) -> int:
        """Samples a lane gives each global micro-batch."""
        return self.micro // self.lanes


class _Reader:
    """A lane's usable samples from a location on, shard after shard (peeking one ahead, so the
    location of the next sample is always known)."""

    def __init__(self, source: Source, order: Order, lane: int, location: Location):
        self.source, self.order, self.lane = source, order, lane
        self.index, self.offset = location
        self._samples = self._open(self.index, self.offset)
        self._next = self._fetch()

    def _open(self, index: int, skip: int) -> Iterator[Any]:
        return self.source.read(self.order.shard(self.lane, index), skip)

    def _fetch(self) -> Any:
        empty = 0
        while True:
            for sample in self._samples:
                return sample
            empty += 1
            if empty > len(self.source.shards):
                raise ValueError(f"lane {self.lane}: {empty} shards in a row without a usable sample (an image and "
                                 f"a caption), the last {self.source.shards[self.order.shard(self.lane, self.index)]}")
            self.index, self.offset = self.index + 1, 0
            self._samples = self._open(self.index, 0)

    @property
    def location(self) -> Location:
        """Where the next sample is."""
        return self.index, self.offset

    def take(self, count: int, keep: bool = True) -> list[Any]:
        """The next `count` samples (or none, only moving past them, when not `keep`)."""
        taken = []
        for _ in range(count):
            if keep:
                taken.append(self._next)
            self.offset += 1
            self._next = self._fetch()
        return taken


class _Lane:
    """One lane's samples from a position on: blocks read whole and served permuted."""

    def __init__(self, source: Source, order: Order, lane: int, position: int, state: list[int] | None):
        self.order, self.lane = order, lane
        block = order.block_of(lane, position)
        known, location = (state[0], (state[1], state[2])) if state is not None else (0, (0, 0))
        if known > block:
            raise ValueError(f"lane {lane}: the saved state is at block {known}, past position {position}")
        self.reader = _Reader(source, order, lane, location)
        for skipped in range(known, block):  # no saved state: read past the earlier blocks
            self.reader.take(order.block_length(lane, skipped), keep=False)
        self._fill(block)
        self.served = position - order.block_start(lane, block)

    def _fill(self, block: int) -> None:
        self.samples = []  # the served block goes before the next is read: one block held, not two
        self.block, self.start = block, self.reader.location
        samples = self.reader.take(self.order.block_length(self.lane, block))
        self.samples = [samples[i] for i in self.order.permutation(self.lane, block)]
        self.served = 0

    def take(self, count: int) -> list[Any]:
        """The lane's next `count` samples."""
        taken = []
        while len(taken) < count:
            if self.served == len(self.samples):
                self._fill(self.block + 1)
            step = min(count - len(taken), len(self.samples) - self.served)
            taken += self.samples[self.served:self.served + step]
            self.served += step
        return taken

    def state(self) -> list[int]:
        """[block, shard index, offset] of the block holding the next sample."""
        if self.served == len(self.samples):
            return [self.block + 1, *self.reader.location]
        return [self.block, *self.start]


class _Part(torch.utils.data.IterableDataset):
    """The part of every micro-batch (from a start index on) that one process's lanes make: each
    lane's samples transformed, in lane order, with the lanes' states after it."""

    def __init__(self, loader: StreamLoader, first_micro: int, states: dict[int, list[int]]):
        self.loader, self.first_micro, self.states = loader, first_micro, states

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        loader, settings = self.loader, self.loader.settings
        own = loader.lanes[len(loader.lanes) * worker // workers:len(loader.lanes) * (worker + 1) // workers]
        per_lane = settings.per_lane
        lanes = [_Lane(loader.source, loader.order, lane, self.first_micro * per_lane, self.states.get(lane))
                 for lane in own]
        for micro in itertools.count(self.first_micro):
            items = []
            for lane_id, lane in zip(own, lanes):
                first = micro * settings.micro + lane_id * per_lane  # the global index of its first sample
                items += [loader.transform(sample, first + k) for k, sample in enumerate(lane.take(per_lane))]
            part = loader.collate(items) if loader.concat is not None else items
            yield micro, part, {lane_id: lane.state() for lane_id, lane in zip(own, lanes)}


class StreamLoader:
    """One rank's micro-batches, streamed: `transform(sample, g)` makes global sample g ready (in
    the loader workers), `collate` batches them; with `concat`, each worker collates its part and
    the parts are joined (cheaper to pass between processes), else the rank collates them all."""

    def __init__(self, source: Source, settings: StreamSettings, rank: int, world_size: int,
                 transform: Callable[[Any, int], Any], collate: Callable[[list], Any],
                 concat: Callable[[list], Any] | None = None):
        _check(settings, world_size)
        self.source, self.settings = source, settings
        self.order = Order(len(source.shards), settings.lanes, settings.block, settings.seed, settings.resampled)
        per_rank = settings.lanes // world_size
        self.lanes = list(range(rank * per_rank, (rank + 1) * per_rank))
        self.transform, self.collate, self.concat = transform, collate, concat
        self._states: dict[int, list[int]] = {}

    def spec(self) -> dict:
        """What a saved state is only valid for."""
        s = self.settings
        return {"shards": self.source.fingerprint, "count": len(self.source.shards), "lanes": s.lanes,
                "block": s.block, "seed": s.seed, "resampled": s.resampled, "per_lane": s.per_lane}

    def from_step(self, step: int, states: list[dict] | None = None) -> Iterator[Any]:
        """Micro-batches from optimizer step `step` on, forever. `states` are the ranks' `state()`
        at that step in an earlier run (from a checkpoint): each lane then starts at its block
        instead of reading up to it."""
        lanes = self._resume(states) if states else {}
        self._states = {lane: lanes[lane] for lane in self.lanes if lane in lanes}
        part = _Part(self, step * self.settings.grad_accum, dict(self._states))
        workers = self.settings.workers
        if workers == 0:
            parts = iter(part)
        else:
            parts = iter(torch.utils.data.DataLoader(part, batch_size=None, num_workers=workers, collate_fn=_as_is,
                                                     prefetch_factor=self.settings.prefetch))
        return self._batches(parts, max(1, workers))

    def _batches(self, parts: Iterator, workers: int) -> Iterator[Any]:
        expected = None
        while True:
            got = [next(parts) for _ in range(workers)]  # the loader takes one part from each worker in turn
            micro = got[0][0]
            if any(m != micro for m, _, _ in got) or (expected is not None and micro != expected):
                raise RuntimeError(f"loader parts out of order: {[m for m, _, _ in got]} (expected {expected})")
            expected = micro + 1
            for _, _, states in got:
                self._states.update(states)
            if self.concat is not None:
                yield got[0][1] if workers == 1 else self.concat([p for _, p, _ in got])
            else:
                yield self.collate([item for _, p, _ in got for item in p])

    def _resume(self, states: list[dict]) -> dict[int, list[int]]:
        lanes: dict[int, list[int]] = {}
        for state in states:
            if state["spec"] != self.spec():
                raise ValueError(f"the checkpoint's data state is for another shard list or order "
                                 f"({state['spec']}, now {self.spec()}); resume with the data it was trained on")
            lanes.update({int(lane): list(value) for lane, value in state["lanes"].items()})
        return lanes

    def state(self) -> dict:
        """Where this rank's lanes stand after the micro-batches taken so far (for a checkpoint)."""
        return {"spec": self.spec(), "lanes": {lane: list(v) for lane, v in sorted(self._states.items())}}


def _as_is(part: Any) -> Any:
    """The loader's conversion of a worker's part: none (a tuple stays a tuple)."""
    return part


def _check(settings: StreamSettings, world_size: int) -> None:
    if settings.lanes % world_size:
        raise ValueError(f"lanes {settings.lanes} is not a multiple of the number of ranks {world_size}")
    if settings.micro % settings.lanes:
        raise ValueError(f"batch_size / grad_accum = {settings.micro} is not a multiple of lanes {settings.lanes}")
    if settings.workers > settings.lanes // world_size:
        raise ValueError(f"{settings.workers} loader workers per rank but only {settings.lanes // world_size} "
                         f"lanes per rank to share out; raise lanes or lower workers")


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch's tensors (in tuples, lists and dicts) on `device`; pinned first on CUDA, so the copy
    overlaps the GPU's work."""
    if isinstance(batch, torch.Tensor):
        if device.type == "cuda":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch
