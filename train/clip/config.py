"""The CLIP trainer's typed config (a YAML file, validated like pipelines)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.config import load_yaml, validate


class ClipTrainConfig(BaseModel):
    """What to train, on what, for how long. DataComp's rule: recipes change the data, never these."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("clip-tiny", description="open_clip model name or a config in train/configs/models")
    pretrained: str | None = Field(None, description="local weights file to start from (no hub downloads)")
    loss: Literal["infonce", "siglip"] = "infonce"
    data: str | None = Field(None, description="a curated output folder (its parquet/ or shards/), or shard files")
    samples_seen: int = Field(20_000, gt=0, description="the compute budget: samples seen in training")
    batch_size: int = Field(64, gt=0, description="global batch per optimizer step, across ranks and accumulation")
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    checkpoint_every: int = Field(100, gt=0, description="optimizer steps between checkpoints")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (GPU); fp32 on CPU")
    seed: int = 0
    workers: int = Field(0, ge=0, description="data loader processes per rank")

    @model_validator(mode="after")
    def _check(self):
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of grad_accum {self.grad_accum}")
        if self.samples_seen < self.batch_size:
            raise ValueError(f"samples_seen {self.samples_seen} is less than one batch ({self.batch_size})")
        return self

    @property
    def total_steps(self) -> int:
        return self.samples_seen // self.batch_size


def load_clip_config(path: str | Path, overrides: list[str] = ()) -> ClipTrainConfig:
    """Read, override (`key=value`) and validate a CLIP training config."""
    return validate(ClipTrainConfig, load_yaml(path, overrides), str(path))
