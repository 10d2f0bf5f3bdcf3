"""The LLaVA model as curation runs it (the recaption stage's captioner) and as train/llava trains
it: the model and its checkpoints, the input format, the format's special tokens and generation."""
