"""A stage's embeddings: where they come from (the config naming a scorer and a store) and
the access that reads stored ones and embeds the rest (curate.io.embedding_store,
curate.models.embedder)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.io.embedding_store import EmbeddingStore, sample_keys
from curate.io.readers.tasks import plan_inputs, read_task
from curate.models.embedder import ClipEmbedder, Embedded
from curate.stage import StageConfig


class EmbeddingConfig(StageConfig):
    """Where a stage's embeddings come from: the scorer, and the store that keeps them; without a
    scorer, the store alone (vectors imported by `curate embeddings import`, e.g. DataComp's)."""

    checkpoint: str | None = Field(None, description="a CLIP checkpoint from `curate train clip`, or an open_clip "
                                                     "weights file; null: read the store only (imported vectors)")
    model: str | None = Field(None, description="open_clip architecture of a plain open_clip weights file")
    store: str | None = Field(None, description="embedding store folder: embeddings computed once, reused by later "
                                                "stages")
    batch_size: int = Field(64, gt=0, description="images per model call")

    def embedding_reads(self) -> list[tuple[str, ...]]:
        """What the embeddings need: a scorer reads the image and caption; a store read without
        one, the uid alone (so a metadata run, with no image bytes, works from imported vectors)."""
        return [("uid", "image", "text")] if self.checkpoint else [("uid",)]

    def check_source(self) -> None:
        """Raise unless the config names a scorer or a store to read."""
        if self.checkpoint is None and self.store is None:
            raise ValueError("set checkpoint (a scorer), store (vectors imported by `curate embeddings import`), "
                             "or both")

    def written_paths(self) -> list[str]:
        return [self.store] if self.store and self.checkpoint else []


class StoredEmbeddingConfig(EmbeddingConfig):
    """An embedding config whose store is required: stages that read vectors back from it."""

    store: str = Field(..., description="embedding store folder, shared by embed, clip_score and the stages that "
                                        "read vectors from it")

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """uid, image and caption with a scorer; uid alone from a store without one."""
        return self.embedding_reads()


class Embeddings:
    """A stage's access to embeddings: stored ones are read, missing ones computed and stored
    (without a scorer, missing ones are failures)."""

    def __init__(self, config: EmbeddingConfig):
        config.check_source()
        if config.checkpoint is None:
            self.embedder = None
            self.store = EmbeddingStore.existing(config.store)
            return
        self.embedder = ClipEmbedder.shared(config.checkpoint, config.model, config.batch_size)
        self.store = EmbeddingStore(config.store, self.embedder.fingerprint) if config.store else None

    def for_table(self, table: pa.Table) -> Embedded:
        """Embeddings of a batch's rows; only those not in the store reach the model."""
        if self.embedder is None:
            return self._stored_only(table)
        keys = sample_keys(table)
        found = self.store.find(keys) if self.store is not None else np.zeros(len(keys), bool)
        todo = np.flatnonzero(~found)
        images, texts = table["image"].to_pylist(), table["text"].to_pylist()
        fresh = self.embedder.embed([images[i] for i in todo], [texts[i] for i in todo])
        failures = {int(todo[i]): message for i, message in fresh.failures.items()}
        if self.store is None:  # vectors as a store would give them back
            as_stored = [v.astype(np.float16).astype(np.float32) for v in (fresh.image, fresh.text)]
            return Embedded(todo[fresh.rows], *as_stored, fresh.score, failures)
        self.store.put([keys[i] for i in todo[fresh.rows]], fresh.image, fresh.text, fresh.score)
        rows = np.array([i for i in range(len(keys)) if i not in failures], np.int64)
        return Embedded(rows, *self.store.get([keys[i] for i in rows]), failures)

    def _stored_only(self, table: pa.Table) -> Embedded:
        """The stored rows of a batch; a row the store lacks is a failure (there is no scorer)."""
        keys = self.store.keys(table)
        found = self.store.find(keys)
        rows = np.flatnonzero(found)
        failures = {int(i): f"not in embedding store {self.store.root} (no checkpoint to embed it)"
                    for i in np.flatnonzero(~found)}
        if not len(rows):
            return Embedded.none(rows, failures)
        return Embedded(rows, *self.store.get([keys[i] for i in rows]), failures)


def embed_paths(paths: list[str], embeddings: Embeddings, batch_size: int = 256) -> tuple[list[str], np.ndarray]:
    """Image embeddings of every decodable image in data sets given by path (an eval split, a
    target set); returns their uids and vectors (n x dim)."""
    uids, vectors = [], []
    for task in plan_inputs(paths):
        for batch in read_task(task, batch_size):
            embedded = embeddings.for_table(batch.table)
            uids += [batch.table["uid"][int(i)].as_py() for i in embedded.rows]
            vectors.append(embedded.image)
    vectors = [v for v in vectors if len(v)]
    return uids, (np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32))
