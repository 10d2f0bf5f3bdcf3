"""The LLaVA model's config: what its checkpoints hold to rebuild it and what `curate train llava`
reads in its `model:` section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

CAPTION_PROMPT = "Describe the image briefly."


class LlavaModelConfig(BaseModel):
    """The model: vision tower, projector, language model and the input format's sizes."""

    model_config = ConfigDict(extra="forbid")

    vision: str = Field(..., description="a `curate train clip` checkpoint, or an open_clip model name "
                                         "(with vision_pretrained, or random weights)")
    vision_pretrained: str | None = Field(None, description="open_clip weights file for a model name in `vision`")
    vision_layer: int = Field(-2, description="resblock whose patch tokens feed the projector (LLaVA: -2, "
                                              "the penultimate)")
    pixel_shuffle: int = Field(1, ge=1, description="merge s x s neighbouring patches into one token (nanoVLM); "
                                                    "1 = off")
    lm: str | None = Field(None, description="a Hugging Face causal LM folder (config, weights, tokenizer)")
    lm_config: str | None = Field(None, description="instead of `lm`: a model config JSON (curate/models/configs) "
                                                    "built with random weights, with a tokenizer trained on the "
                                                    "training captions")
    vocab_size: int = Field(2048, gt=300, description="the trained tokenizer's vocabulary (with lm_config)")
    max_grid: int = Field(4, ge=1, le=4, description="images split into up to max_grid x max_grid regions")
    region_size: int | None = Field(None, gt=0, description="source pixels per region side before the grid is "
                                                            "capped [default: the tower's input size]")
    pad_token: str | None = Field(None, description="padding token [default: <im_end>]")
    pad_to_multiple: int = Field(1, ge=1, description="pad a batch's length and its number of image views up to "
                                                      "a multiple of this (64 on a GPU: fewer distinct shapes, "
                                                      "each of which costs a warm-up)")
    prefix_lm: bool = Field(False, description="PaliGemma: full attention over image and prompt, causal "
                                               "over the answer")

    @model_validator(mode="after")
    def _one_lm(self):
        if (self.lm is None) == (self.lm_config is None):
            raise ValueError("give exactly one of lm (a Hugging Face model folder) and lm_config (a config JSON)")
        return self
