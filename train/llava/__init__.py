"""LLaVA trainer: a frozen open_clip vision tower, an MLP projector and a Hugging Face causal LM."""
