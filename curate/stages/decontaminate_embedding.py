"""Decontamination by embedding: drop samples whose CLIP image embedding is close to an evaluation image's."""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field, model_validator

from curate.neighbours import SearchConfig, build_index, search
from curate.stage import MapStage, Verdict
from curate.stages.embeddings import EmbeddingConfig, Embeddings, embed_paths


class DecontaminateEmbeddingConfig(EmbeddingConfig, SearchConfig):
    """Parameters of the decontaminate_embedding stage."""

    eval_data: list[str] = Field(..., min_length=1, description="evaluation sets (Parquet/WebDataset/folders) to keep "
                                                               "out (without a checkpoint: their vectors in the store)")
    threshold: float = Field(0.9, ge=-1, le=1,
                             description="image cosine to an eval image at or above which a sample goes")

    @model_validator(mode="after")
    def _a_source(self):
        self.check_source()
        return self

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """uid, image and caption with a scorer; uid alone from a store without one."""
        return self.embedding_reads()


class DecontaminateEmbedding(MapStage):
    """Reject samples whose image embedding has cosine >= threshold to an evaluation image (FAISS, the dedup search)."""

    name = "decontaminate_embedding"
    Config = DecontaminateEmbeddingConfig
    reads = ("uid", "image", "text")
    reasons = ("unembeddable_image", "eval_embedding")
    uses_model = True

    def setup(self) -> None:
        self._embeddings = Embeddings(self.config)
        self._eval_uids, vectors = embed_paths(self.config.eval_data, self._embeddings)
        if not len(vectors):  # decontaminating against nothing would pass every sample silently
            raise ValueError(f"decontaminate_embedding: no image in eval_data {self.config.eval_data} could be "
                             "embedded; expected evaluation samples with decodable images")
        self._index = build_index(vectors, self.config)

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        embedded = self._embeddings.for_table(table)
        for i, message in embedded.failures.items():
            verdict.reject(i, "unembeddable_image", message)
        if not len(embedded.rows):
            return verdict
        rows, found, cosines = search(self._index, embedded.image, 1, self.config.threshold)
        for row, eval_row, cosine in zip(rows, found, cosines):
            verdict.reject(int(embedded.rows[row]), "eval_embedding", f"{self._eval_uids[eval_row]} ({cosine:.3f})")
        return verdict
