"""Models that curation and training share: CLIP scorers, captioners, the embedder and the copy
descriptor, loaded from checkpoints (weights only) with their configs; stages and trainers both
import them, so curation never imports the trainers."""
