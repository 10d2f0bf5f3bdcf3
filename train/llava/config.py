"""The LLaVA trainer's typed config (a YAML file, validated like pipelines)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from curate.config import load_yaml, validate
from curate.models.llava.config import CAPTION_PROMPT, LlavaModelConfig
from train.config import TrainConfig


class LlavaTrainConfig(TrainConfig):
    """What to train, on what, for how long (DataComp's rule: recipes change the data, never these)."""

    model: LlavaModelConfig
    stage: Literal[1, 2] = Field(1, description="1: projector on caption pairs; 2: projector and LM on "
                                                "conversations")
    init: str | None = Field(None, description="a LLaVA checkpoint to start from (stage 2 starts from stage 1's)")
    data: str | None = Field(None, description="stage 1: a curated output folder or shard files; stage 2: a "
                                               "LLaVA-Instruct JSON/JSONL file or a folder holding train.json")
    caption_prompt: str = Field(CAPTION_PROMPT, description="the fixed question stage 1's captions answer")
    samples_seen: int = Field(2_000, gt=0, description="the compute budget: samples seen in training")
    batch_size: int = Field(16, gt=0, description="global batch per optimizer step, across ranks and accumulation")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)


def load_llava_config(path: str | Path, overrides: list[str] = ()) -> LlavaTrainConfig:
    """Read, override (`key=value`, e.g. `model.prefix_lm=true`) and validate a LLaVA config."""
    return validate(LlavaTrainConfig, load_yaml(path, overrides, "training"), str(path))
