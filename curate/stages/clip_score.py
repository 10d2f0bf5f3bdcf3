"""CLIP score stage: image-caption cosine similarity from a CLIP scorer, filtered by an absolute
threshold, per-language thresholds (LAION) or a top fraction of the whole pool (DataComp)."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from curate.schema import set_column
from curate.stage import GlobalStage, StageConfig, Verdict, map_rows


class ClipScoreConfig(StageConfig):
    """Parameters of the clip_score stage; set exactly one of threshold, thresholds, top_fraction."""

    checkpoint: str = Field(..., description="a CLIP checkpoint from `curate train clip`, or an open_clip weights file")
    model: str | None = Field(None, description="open_clip architecture of a plain open_clip weights file")
    threshold: float | None = Field(None, ge=-1, le=1, description="keep cosine >= this (DataComp B/32: 0.25)")
    thresholds: dict[str, float] | None = Field(
        None, description="per language (needs `language` first), with a `default`; LAION: {en: 0.28, default: 0.26}")
    top_fraction: float | None = Field(None, gt=0, le=1, description="keep this top share of the pool (DataComp: 0.3)")
    batch_size: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _one_rule(self):
        rules = [r for r in ("threshold", "thresholds", "top_fraction") if getattr(self, r) is not None]
        if len(rules) != 1:
            raise ValueError(f"set exactly one of threshold, thresholds, top_fraction (got {rules or 'none'})")
        if self.thresholds is not None and "default" not in self.thresholds:
            raise ValueError("thresholds needs a 'default' entry for languages not listed")
        return self


class ClipScore(GlobalStage):
    """Score image-caption similarity with a CLIP; keep above a threshold, per-language thresholds or the pool's top fraction."""

    name = "clip_score"
    Config = ClipScoreConfig
    reads = ("image", "text")
    writes = {"clip_score": pa.float32()}
    reasons = ("unscorable_image", "low_clip_score")
    uses_model = True

    def setup(self) -> None:
        import torch

        from train.clip.model import load_checkpoint

        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        self._clip, _ = load_checkpoint(self.config.checkpoint, self.config.model, device=self._device)
        self._clip.model.eval()

    def _preprocess(self, data: bytes):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return self._clip.preprocess(im.convert("RGB"))

    def process(self, table: pa.Table) -> Verdict:
        import torch

        tensors, failures = map_rows(table.column("image").to_pylist(), self._preprocess)
        scored = [i for i in range(table.num_rows) if i not in failures]
        images = [tensors[i] for i in scored]
        texts = [t or "" for i, t in enumerate(table.column("text").to_pylist()) if i not in failures]
        scores: list[float | None] = [None] * table.num_rows
        with torch.no_grad():
            for start in range(0, len(scored), self.config.batch_size):
                rows = scored[start : start + self.config.batch_size]
                image_batch = torch.stack(images[start : start + len(rows)]).to(self._device)
                text_batch = self._clip.tokenizer(texts[start : start + len(rows)]).to(self._device)
                image_features = torch.nn.functional.normalize(self._clip.model.encode_image(image_batch), dim=-1)
                text_features = torch.nn.functional.normalize(self._clip.model.encode_text(text_batch), dim=-1)
                for row, score in zip(rows, (image_features * text_features).sum(-1).float().cpu().tolist()):
                    scores[row] = score
        verdict = Verdict(set_column(table, "clip_score", scores, pa.float32()))
        for i, message in failures.items():
            verdict.reject(i, "unscorable_image", message)
        return verdict

    def partial(self, table: pa.Table) -> np.ndarray:
        if self.config.top_fraction is None:
            return np.zeros(0, np.float32)
        return table.column("clip_score").to_numpy().astype(np.float32)

    def merge(self, partials: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(partials) if partials else np.zeros(0, np.float32)

    def finalize(self, scores: np.ndarray) -> float | dict[str, float]:
        """The threshold(s) to apply: given, or the exact score of the k-th best sample,
        k = ceil(top_fraction * n); ties at that score are all kept."""
        if self.config.top_fraction is None:
            return self.config.thresholds if self.config.thresholds is not None else self.config.threshold
        if len(scores) == 0:
            return math.inf
        k = math.ceil(self.config.top_fraction * len(scores))
        return float(np.sort(scores)[::-1][k - 1])

    def apply(self, table: pa.Table, state: float | dict[str, float]) -> Verdict:
        verdict = Verdict(table)
        scores = table.column("clip_score").to_pylist()
        if isinstance(state, dict):
            if "lang" not in table.column_names:
                raise ValueError("clip_score with per-language thresholds needs the `language` stage before it")
            limits = [state.get(lang, state["default"]) for lang in table.column("lang").to_pylist()]
        else:
            limits = [state] * table.num_rows
        for i, (score, limit) in enumerate(zip(scores, limits)):
            if np.float32(score) < np.float32(limit):
                verdict.reject(i, "low_clip_score", f"{score:.4f} < {limit:.4f}")
        return verdict
