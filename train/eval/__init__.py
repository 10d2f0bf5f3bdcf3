"""Evaluation of CLIP models on real held-out data: zero-shot classification and retrieval (DataComp style)."""
