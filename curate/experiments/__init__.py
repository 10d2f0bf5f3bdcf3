"""Experiments that tie curation to the trainers: `curate ablate` (recipes scored by the model
trained on each, ablate.py) and `curate bootstrap` (rounds of CLIP scorers, bootstrap.py). With
the CLI they are the tie layer: they may import train/; nothing below them imports them.
"""
