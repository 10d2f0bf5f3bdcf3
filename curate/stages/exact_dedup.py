"""Exact dedup stage: one sample per identical image bytes, image+caption, or url+caption.

A keyed decision: each kept row's fit row is (uid, a 128-bit md5 key as two int64, _row); the
engine's shuffle brings every row of a key into one partition, where the smallest uid wins.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.stage import ROW_COLUMN, Dataset, FitContext, Fitted, GlobalStage, StageConfig, rejections, shared_rows

KEY_COLUMNS = ("key_high", "key_low")


class ExactDedupConfig(StageConfig):
    """Parameters of the exact_dedup stage (LAION-5B: key url_text)."""

    key: Literal["image", "image_text", "url_text"] = Field(
        "image", description="what makes two samples the same: image bytes, image bytes and caption, or url and caption"
    )

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """url_text reads no image, so it runs on metadata (no image bytes)."""
        return [("uid", "text", "url") if self.key == "url_text" else ("uid", "image", "text")]


@cache
def _duckdb():
    """One single-threaded DuckDB connection per process (engines give each worker its cores)."""
    import duckdb

    connection = duckdb.connect(config={"threads": 1})
    connection.execute("set enable_progress_bar = false")
    return connection


def _as_keys(digests: np.ndarray) -> pa.Table:
    """16-byte digests (n x 16 uint8, or 128-bit little-endian ints) as the two int64 key columns."""
    halves = np.ascontiguousarray(digests).view("<i8").reshape(-1, 2)
    return pa.table({KEY_COLUMNS[0]: pa.array(halves[:, 1]), KEY_COLUMNS[1]: pa.array(halves[:, 0])})


def text_keys(first: pa.ChunkedArray, second: pa.ChunkedArray) -> pa.Table:
    """md5 of (length of `first`, `first`, `second`) per row, computed in bulk by DuckDB; the
    length prefix keeps ("ab", "c") and ("a", "bc") apart; nulls count as empty."""
    connection = _duckdb()
    connection.register("pairs", pa.table({"a": first, "b": second}))
    try:
        result = connection.sql("select md5_number(length(coalesce(a, ''))::varchar || ':' || coalesce(a, '') || "
                                "coalesce(b, '')) as k from pairs").to_arrow_table()
    finally:
        connection.unregister("pairs")
    digests = pa.concat_arrays(result.column("k").chunks) if result.num_rows else None
    if digests is None:
        return _as_keys(np.zeros((0, 16), np.uint8))
    return _as_keys(np.frombuffer(digests.buffers()[1], np.uint8)[: 16 * len(digests)].reshape(-1, 16))


def image_keys(images: pa.ChunkedArray, texts: pa.ChunkedArray | None) -> pa.Table:
    """md5 of (length of the image bytes, the bytes, the caption when given) per row."""
    caption = texts.to_pylist() if texts is not None else [None] * len(images)
    digests = [hashlib.md5(b"%d:" % len(i or b"") + (i or b"") + (t or "").encode()).digest()
               for i, t in zip(images.to_pylist(), caption)]
    return _as_keys(np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16))


def keep_smallest_uid(table: pa.Table) -> pa.Table:
    """Per key, the smallest uid is kept; every other row is a duplicate, with the winner as value.
    Only rows whose key's high half another row shares are sorted by key and uid (shared_rows)."""
    table = table.take(pa.array(shared_rows(table.column(KEY_COLUMNS[0]).to_numpy())))
    table = table.sort_by([(KEY_COLUMNS[0], "ascending"), (KEY_COLUMNS[1], "ascending"), ("uid", "ascending")])
    high, low = (table.column(c).to_numpy() for c in KEY_COLUMNS)
    starts = np.r_[True, (high[1:] != high[:-1]) | (low[1:] != low[:-1])] if len(high) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))
    duplicate = np.flatnonzero(~starts)
    return rejections(table.column(ROW_COLUMN).take(pa.array(duplicate)), "duplicate",
                      table.column("uid").take(pa.array(first[duplicate])))


class ExactDedup(GlobalStage):
    """Keep one sample per identical key (image bytes, image+caption or url+caption); the smallest uid wins."""

    name = "exact_dedup"
    Config = ExactDedupConfig
    reads = ("uid", "image", "text", "url")
    reasons = ("duplicate",)

    def fit_rows(self, table: pa.Table) -> pa.Table:
        """uid, the key and _row of each row; rows without an image (decode rejects them) are
        nobody's duplicate by image, so they have no fit row."""
        if self.config.key == "url_text":
            keys = text_keys(table.column("url"), table.column("text"))
        else:
            table = table.filter(pc.fill_null(pc.greater(pc.binary_length(table.column("image")), 0), False))
            keys = image_keys(table.column("image"), table.column("text") if self.config.key == "image_text" else None)
        return pa.Table.from_arrays([table.column("uid"), *keys.columns, table.column(ROW_COLUMN)],
                                    names=["uid", *KEY_COLUMNS, ROW_COLUMN])

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        return Fitted(rejected=context.group(data, list(KEY_COLUMNS), keep_smallest_uid, "duplicates"))
