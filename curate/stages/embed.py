"""Embed stage: CLIP image and text embeddings of every sample, computed once into an embedding store."""

from __future__ import annotations

import pyarrow as pa

from curate.stage import MapStage, Verdict
from curate.stages.embeddings import Embeddings, StoredEmbeddingConfig


class EmbedConfig(StoredEmbeddingConfig):
    """Parameters of the embed stage: the scorer and the store it fills."""


class Embed(MapStage):
    """Compute CLIP image and text embeddings once (float16 store keyed by uid); samples already in the
    store are skipped."""

    name = "embed"
    Config = EmbedConfig
    reads = ("uid", "image", "text")
    reasons = ("unembeddable_image",)
    uses_model = True

    def setup(self) -> None:
        self._embeddings = Embeddings(self.config)

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        for i, message in self._embeddings.for_table(table).failures.items():
            verdict.reject(i, "unembeddable_image", message)
        return verdict
