"""The CLIP trainer's typed config (a YAML file, validated like pipelines)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from curate.config import load_yaml, validate
from train.config import TrainConfig


class ClipTrainConfig(TrainConfig):
    """What to train, on what, for how long. DataComp's rule: recipes change the data, never these."""

    model: str = Field("clip-tiny", description="open_clip model name or a config in curate/models/configs")
    pretrained: str | None = Field(None, description="local weights file to start from (no hub downloads)")
    loss: Literal["infonce", "siglip"] = "infonce"
    data: str | None = Field(None, description="a curated output folder (its parquet/ or shards/), or shard files")


def load_clip_config(path: str | Path, overrides: list[str] = ()) -> ClipTrainConfig:
    """Read, override (`key=value`) and validate a CLIP training config."""
    return validate(ClipTrainConfig, load_yaml(path, overrides, "training"), str(path))
