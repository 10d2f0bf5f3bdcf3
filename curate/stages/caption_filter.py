"""Caption filter stage (CapFilt's filter): score the web caption and every synthetic caption
against the image with a CLIP scorer, keep the captions above a threshold and/or the best n,
and apply an output policy. Provenance is always written: where the caption in `text` came
from, the web caption and its score, every synthetic caption's score, and the survivors."""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from curate.schema import set_column
from curate.stage import MapStage, Verdict
from curate.stages.embeddings import EmbeddingConfig, Embeddings


class CaptionFilterConfig(EmbeddingConfig):
    """Parameters of the caption_filter stage (the scorer's, plus which captions survive and what is written)."""

    threshold: float | None = Field(None, ge=-1, le=1, description="keep captions whose CLIP cosine is at least this")
    top_n: int | None = Field(None, gt=0, description="keep at most the n best captions per image (BLIP-2: 2)")
    include_web: bool = Field(True, description="the web caption competes with the synthetic ones")
    policy: Literal["replace", "separate", "columns"] = Field(
        "replace", description="replace: `text` becomes the best surviving caption; separate: also one extra sample "
        "per other survivor (uid derived, parent_uid set); columns: `text` stays the web caption, survivors in "
        "`captions_kept`")

    @model_validator(mode="after")
    def _a_rule(self):
        if self.threshold is None and self.top_n is None:
            raise ValueError("set threshold, top_n or both")
        if self.checkpoint is None:
            raise ValueError("set checkpoint: caption_filter embeds the synthetic captions with the scorer")
        return self


def derived_uid(uid: str, index: int) -> str:
    """The uid of a sample's `index`-th extra caption sample (32 hex chars, stable)."""
    return hashlib.md5(f"{uid}:caption:{index}".encode()).hexdigest()


class CaptionFilter(MapStage):
    """Score web and synthetic captions with a CLIP; keep the best by threshold and/or top n; replace,
    add or store them."""

    name = "caption_filter"
    Config = CaptionFilterConfig
    reads = ("image", "text", "synthetic_captions")
    writes = {"web_text": pa.string(), "web_score": pa.float32(), "synthetic_scores": pa.list_(pa.float32()),
              "captions_kept": pa.list_(pa.string()), "caption_source": pa.string(), "caption_score": pa.float32(),
              "parent_uid": pa.string()}
    reasons = ("unembeddable_image", "no_caption_passes")
    uses_model = True
    derives_samples = True

    def setup(self) -> None:
        self._embeddings = Embeddings(self.config)

    def _survivors(self, scored: list[tuple[float, str, str]]) -> list[tuple[float, str, str]]:
        """(score, caption, source) that pass, best first (ties: web first, then caption order)."""
        ranked = sorted(enumerate(scored), key=lambda x: (-x[1][0], x[0]))
        passing = [c for _, c in ranked if self.config.threshold is None or c[0] >= self.config.threshold]
        kept, seen = [], set()
        for candidate in passing:  # a caption written twice counts once, at its best rank
            if candidate[1] not in seen:
                seen.add(candidate[1])
                kept.append(candidate)
        return kept[: self.config.top_n] if self.config.top_n else kept

    def process(self, table: pa.Table) -> Verdict:
        embedded = self._embeddings.for_table(table)
        synthetic = table.column("synthetic_captions").to_pylist()
        flat = [c for i in embedded.rows for c in synthetic[i] or []]
        # rounded like the stored web-caption vectors, so web and synthetic captions rank on equal terms
        text_vectors = self._embeddings.embedder.embed_texts(flat).astype(np.float16).astype(np.float32)
        n = table.num_rows
        web_scores: list[float | None] = [None] * n
        synthetic_scores: list[list[float] | None] = [None] * n
        kept: list[list[tuple[float, str, str]]] = [[] for _ in range(n)]
        offset = 0
        for k, i in enumerate(embedded.rows):
            captions = synthetic[i] or []
            scores = (text_vectors[offset : offset + len(captions)] @ embedded.image[k]).tolist() if captions else []
            offset += len(captions)
            # the web caption scored like the synthetic ones (stored float16 vectors), so they rank fairly
            web_scores[i], synthetic_scores[i] = float(embedded.text[k] @ embedded.image[k]), scores
            candidates = [(web_scores[i], table["text"][i].as_py(), "web")] if self.config.include_web else []
            kept[i] = self._survivors(candidates + [(s, c, "synthetic") for s, c in zip(scores, captions)])
        return self._apply_policy(table, embedded.failures, web_scores, synthetic_scores, kept)

    def _apply_policy(self, table, failures, web_scores, synthetic_scores, kept) -> Verdict:
        web = table.column("text").to_pylist()
        if self.config.policy == "columns":
            best = [(score, text, "web") for score, text in zip(web_scores, web)]
        else:
            best = [k[0] if k else (None, text, "web") for k, text in zip(kept, web)]
        out = table
        for name, values in (("web_text", web), ("web_score", web_scores), ("synthetic_scores", synthetic_scores),
                             ("captions_kept", [[c for _, c, _ in k] for k in kept]),
                             ("text", [b[1] for b in best]), ("caption_source", [b[2] for b in best]),
                             ("caption_score", [b[0] for b in best]), ("parent_uid", [None] * table.num_rows)):
            out = set_column(out, name, values, self.writes.get(name, pa.string()))
        reasons: list[str | None] = [None] * table.num_rows
        values: list[str | None] = [None] * table.num_rows
        for i, message in failures.items():
            reasons[i], values[i] = "unembeddable_image", message
        for i in range(table.num_rows):
            if reasons[i] is None and not kept[i]:
                best_score = max([web_scores[i]] + synthetic_scores[i])
                reasons[i], values[i] = "no_caption_passes", f"best {best_score:.4f}"
        if self.config.policy == "separate":
            extra = [(i, j, c) for i in range(table.num_rows) if reasons[i] is None
                     for j, c in enumerate(kept[i][1:], 1)]
            if extra:
                rows = out.take([i for i, _, _ in extra]).to_pydict()
                rows.update(uid=[derived_uid(rows["uid"][k], j) for k, (_, j, _) in enumerate(extra)],
                            parent_uid=[rows["uid"][k] for k in range(len(extra))],
                            text=[c[1] for _, _, c in extra], caption_source=[c[2] for _, _, c in extra],
                            caption_score=[c[0] for _, _, c in extra])
                out = pa.concat_tables([out, pa.table(rows, schema=out.schema)])
                reasons += [None] * len(extra)
                values += [None] * len(extra)
        return Verdict(out, reasons, values)
