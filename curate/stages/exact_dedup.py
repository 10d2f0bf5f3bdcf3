"""Exact dedup stage: one sample per identical image bytes, image+caption, or url+caption."""

from __future__ import annotations

import hashlib
from typing import Literal

import pyarrow as pa
from pydantic import Field

from curate.stage import GlobalStage, StageConfig, Verdict


class ExactDedupConfig(StageConfig):
    """Parameters of the exact_dedup stage (LAION-5B: key url_text)."""

    key: Literal["image", "image_text", "url_text"] = Field(
        "image", description="what makes two samples the same: image bytes, image bytes and caption, or url and caption"
    )

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """url_text reads no image, so it runs on metadata (no image bytes)."""
        return [("uid", "text", "url") if self.key == "url_text" else ("uid", "image", "text")]


class ExactDedup(GlobalStage):
    """Keep one sample per identical key (image bytes, image+caption or url+caption); the smallest uid wins."""

    name = "exact_dedup"
    Config = ExactDedupConfig
    reads = ("uid", "image", "text", "url")
    reasons = ("duplicate",)

    def _keys(self, table: pa.Table) -> list[bytes]:
        texts = table.column("text").to_pylist()
        if self.config.key == "url_text":
            parts = [((u or "").encode(), (t or "").encode()) for u, t in zip(table.column("url").to_pylist(), texts)]
        else:
            images = table.column("image").to_pylist()
            if self.config.key == "image":
                texts = [None] * len(images)
            parts = [(i or b"", (t or "").encode()) for i, t in zip(images, texts)]
        # length-prefix the first part so ("ab", "c") and ("a", "bc") differ
        return [hashlib.blake2b(len(a).to_bytes(8, "little") + a + b, digest_size=16).digest() for a, b in parts]

    def _comparable(self, table: pa.Table) -> list[bool]:
        """Rows without an image (decode rejects them) are nobody's duplicate by image."""
        if self.config.key == "url_text":
            return [True] * table.num_rows
        return [bool(i) for i in table.column("image").to_pylist()]

    def partial(self, table: pa.Table) -> dict[bytes, str]:
        winners: dict[bytes, str] = {}
        for key, uid, ok in zip(self._keys(table), table.column("uid").to_pylist(), self._comparable(table)):
            if ok and (key not in winners or uid < winners[key]):
                winners[key] = uid
        return winners

    def merge(self, partials: list[dict[bytes, str]]) -> dict[bytes, str]:
        merged: dict[bytes, str] = {}
        for part in partials:
            for key, uid in part.items():
                if key not in merged or uid < merged[key]:
                    merged[key] = uid
        return merged

    def apply(self, table: pa.Table, state: dict[bytes, str]) -> Verdict:
        verdict = Verdict(table)
        rows = zip(self._keys(table), table.column("uid").to_pylist(), self._comparable(table))
        for i, (key, uid, ok) in enumerate(rows):
            if ok and state[key] != uid:
                verdict.reject(i, "duplicate", state[key])
        return verdict
