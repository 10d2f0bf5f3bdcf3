"""The sample order: a pure function of the seed, the shard list and two fixed sizes (lanes and
the shuffle block), never of the number of ranks or loader workers.

Shards are dealt to `lanes` streams. Without resampling the shard sequence is the seeded
permutations of epoch 0, 1, 2, ... one after another, and lane l takes its elements l, l + lanes,
l + 2 lanes, ...; with resampling (open_clip's --dataset-resampled) each element is a seeded draw
with replacement, and there are no epochs. A lane reads its shards' samples one after another
in blocks of `block` samples (lane l's first block is shorter by l * block // lanes, so the lanes
do not all start a block at the same step) and serves each block in a seeded permutation.

Global micro-batch i (counted from the first step) takes `per_lane` samples from every lane, in
lane order: lane l's positions i * per_lane ... (i + 1) * per_lane - 1. A rank serves a
contiguous range of lanes, so the ranks together serve the global micro-batch of one process.
"""

from __future__ import annotations

import numpy as np

_EPOCH, _DRAW, _BLOCK = 0, 1, 2  # tags that keep the seeded streams apart


class Order:
    """Which shard each lane reads, where its blocks start and how each block is permuted."""

    def __init__(self, num_shards: int, lanes: int, block: int, seed: int, resampled: bool = False):
        if num_shards < 1:
            raise ValueError("no shards to read")
        self.num_shards, self.lanes, self.block, self.seed, self.resampled = num_shards, lanes, block, seed, resampled
        self._epochs: dict[int, np.ndarray] = {}

    def shard(self, lane: int, index: int) -> int:
        """The shard lane `lane` reads `index`-th (counting from 0, across epochs)."""
        element = lane + index * self.lanes
        if self.resampled:
            return int(np.random.default_rng([self.seed, _DRAW, element]).integers(self.num_shards))
        epoch, offset = divmod(element, self.num_shards)
        if epoch not in self._epochs:
            if len(self._epochs) > 4:  # lanes drift across an epoch boundary at different times
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = np.random.default_rng([self.seed, _EPOCH, epoch]).permutation(self.num_shards)
        return int(self._epochs[epoch][offset])

    def first_block(self, lane: int) -> int:
        """Length of the lane's first block (the others are `block` long)."""
        return self.block - lane * self.block // self.lanes

    def block_of(self, lane: int, position: int) -> int:
        """The block holding the lane's `position`-th sample."""
        first = self.first_block(lane)
        return 0 if position < first else 1 + (position - first) // self.block

    def block_start(self, lane: int, block: int) -> int:
        """The lane position where block `block` starts."""
        return 0 if block == 0 else self.first_block(lane) + (block - 1) * self.block

    def block_length(self, lane: int, block: int) -> int:
        """How many samples block `block` of the lane holds."""
        return self.first_block(lane) if block == 0 else self.block

    def permutation(self, lane: int, block: int) -> np.ndarray:
        """The order block `block` of the lane is served in (indices into the block as read)."""
        return np.random.default_rng([self.seed, _BLOCK, lane, block]).permutation(self.block_length(lane, block))
