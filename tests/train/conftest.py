"""Fixtures for the trainer tests: the LLaVA ones live in llava_fixtures.py (some tests import
them from there by name)."""

from tests.train.llava_fixtures import conversations, llava, llava_checkpoint, llava_model_config, pool_images, tiny_lm  # noqa: F401
