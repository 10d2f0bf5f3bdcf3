"""What every trainer's config shares: the compute budget, the optimizer, checkpoints, precision
and loaders. A trainer's config adds its model and data and may change the defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """The shared loop's settings (DataComp's rule: recipes change the data, never these)."""

    model_config = ConfigDict(extra="forbid")

    samples_seen: int = Field(20_000, gt=0, description="the compute budget: samples seen in training")
    batch_size: int = Field(64, gt=0, description="global batch per optimizer step, across ranks and accumulation")
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    checkpoint_every: int = Field(100, gt=0, description="optimizer steps between checkpoints")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (GPU); fp32 on CPU")
    seed: int = 0
    workers: int = Field(0, ge=0, description="data loader processes per rank (at most lanes / ranks)")
    lanes: int = Field(8, gt=0, description="streams the shards are dealt to; the order depends on it, not on "
                                            "the number of ranks or loader workers, which share the lanes out")
    shuffle_block: int = Field(1000, gt=0, description="samples a lane reads whole, then serves in a seeded order "
                                                       "(a rank holds lanes / ranks of these blocks)")
    resampled: bool = Field(False, description="draw shards with replacement, no epochs (open_clip's "
                                               "--dataset-resampled)")

    @model_validator(mode="after")
    def _check_budget(self):
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of grad_accum {self.grad_accum}")
        if (self.batch_size // self.grad_accum) % self.lanes:
            raise ValueError(f"batch_size / grad_accum = {self.batch_size // self.grad_accum} must be a multiple of "
                             f"lanes {self.lanes} (each lane gives every micro-batch the same number of samples)")
        if self.samples_seen < self.batch_size:
            raise ValueError(f"samples_seen {self.samples_seen} is less than one batch ({self.batch_size})")
        return self

    @property
    def total_steps(self) -> int:
        return self.samples_seen // self.batch_size
