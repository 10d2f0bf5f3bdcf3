"""The CLIP trainer: open_clip models and losses, a DDP training loop over curated shards."""
