"""A tiny copy descriptor for the tests, trained in seconds by `curate train copydetect`'s trainer on
the test pool's own images (import the fixture by name where it is used)."""

from pathlib import Path

import pytest

TINY = {"size": 32, "stem": 2, "widths": (8, 16), "dim": 16}


@pytest.fixture(scope="session")
def copydetect_checkpoint(tmp_path_factory, pool_root) -> Path:
    """copydetect.pt (and .json) of a 32-px, two-stage descriptor trained for 12 steps on the test
    pool's training families, calibrated on planted copies of 8 held-out drawings."""
    from curate.models.copydetect import DescriptorArchitecture
    from train.copydetect.train import CopyDetectConfig, train_copydetect

    out = tmp_path_factory.mktemp("copydetect")
    train_copydetect(CopyDetectConfig(data=[str(pool_root / "pool")], output=str(out), steps=12, batch_size=16,
                                      source_side=64, calibrate_originals=8, mine_every=6,
                                      architecture=DescriptorArchitecture(**TINY)), progress=False)
    return out / "copydetect.pt"
