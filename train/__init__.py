"""Trainers and evaluation (CLIP, LLaVA); they read the shards that curate writes."""
