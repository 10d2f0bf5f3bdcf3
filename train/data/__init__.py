"""Streaming training data for every trainer: shards (WebDataset tars, Parquet parts; local or
fsspec URLs) or in-memory records, dealt to lanes, read a bounded block at a time, in an order
fixed by the seed and the shard list, resumable at any step."""

from train.data.sources import Pair, RecordSource, ShardSource
from train.data.stream import StreamLoader, StreamSettings, to_device

__all__ = ["Pair", "RecordSource", "ShardSource", "StreamLoader", "StreamSettings", "to_device"]
