"""NSFW stage: NudeNet's detector (shipped in its wheel) finds exposed body parts; an image whose
most confident unsafe detection scores above the threshold is rejected."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curate.detector import LABELS, NudeNet, decode_frames
from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict, map_rows

UNSAFE = ["FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED",
          "ANUS_EXPOSED"]


class NsfwConfig(StageConfig):
    """Parameters of the nsfw stage."""

    threshold: float = Field(0.5, ge=0.0, le=1.0, description="reject when nsfw_score is above this")
    classes: list[str] = Field(UNSAFE, min_length=1, description="NudeNet classes that count as unsafe")
    min_confidence: float = Field(0.25, ge=0.0, le=1.0,
                                  description="a detection at or above this is listed in nsfw_classes")
    side: int = Field(320, ge=32, multiple_of=32, description="the detector's input side in pixels (its own: 320)")
    batch_size: int = Field(16, gt=0, description="images per model run")

    @field_validator("classes")
    @classmethod
    def _known(cls, classes: list[str]) -> list[str]:
        unknown = sorted(set(classes) - set(LABELS))
        if unknown:
            raise ValueError(f"unknown NudeNet classes {unknown}; known: {', '.join(LABELS)}")
        return classes


class Nsfw(MapStage):
    """Score images with NudeNet (exposed-body detector); write nsfw_score, nsfw_classes; reject above the threshold."""

    name = "nsfw"
    Config = NsfwConfig
    reads = ("image",)
    writes = {"nsfw_score": pa.float32(), "nsfw_classes": pa.list_(pa.string())}
    reasons = ("undecodable_image", "nsfw")
    uses_model = True

    def setup(self) -> None:
        self._model = NudeNet(self.config.side, self.config.batch_size)
        self._unsafe = np.isin(np.arange(len(LABELS)), [LABELS.index(c) for c in self.config.classes])

    def process(self, table: pa.Table) -> Verdict:
        images, failures = map_rows(table.column("image").to_pylist(), decode_frames)  # an animation's every frame
        rows = [i for i, image in enumerate(images) if image is not None]
        scores = np.zeros(table.num_rows, np.float32)
        classes: list[list[str] | None] = [None] * table.num_rows
        tops = np.full(table.num_rows, None, dtype=object)
        for i, found in zip(rows, self._model.detect_frames([images[i] for i in rows])):
            unsafe = self._unsafe[found.classes]
            listed = unsafe & (found.scores >= self.config.min_confidence)
            classes[i] = sorted(set(LABELS[c] for c in found.classes[listed]))
            if unsafe.any():
                best = np.flatnonzero(unsafe)[np.argmax(found.scores[unsafe])]
                scores[i] = found.scores[best]
                tops[i] = f"{LABELS[found.classes[best]]}:{found.scores[best]:.3f}"
        score_column = pa.array(scores, pa.float32(), mask=np.isin(np.arange(table.num_rows), list(failures)))
        table = set_column(set_column(table, "nsfw_score", score_column), "nsfw_classes", classes,
                           pa.list_(pa.string()))
        verdict = Verdict(table)
        for i, message in failures.items():
            verdict.reject(i, "undecodable_image", message)
        verdict.reject_where(scores > self.config.threshold, "nsfw", tops)
        return verdict
