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


@pytest.fixture(scope="session")
def calibrated_copydetect(copydetect_checkpoint, pool_table, tmp_path_factory) -> Path:
    """The tiny descriptor with a threshold in its JSON, where `curate calibrate near_dedup --write`
    puts one: the median cosine of JPEG copies of 20 pool drawings to their originals (a model
    this small holds no false-merge rate its own calibration could pick)."""
    import numpy as np

    from curate import copies
    from curate.calibrate import write_threshold
    from curate.models.copydetect import CopyDescriptor

    out = tmp_path_factory.mktemp("calibrated") / "copydetect.pt"
    out.write_bytes(copydetect_checkpoint.read_bytes())
    out.with_suffix(".json").write_bytes(copydetect_checkpoint.with_suffix(".json").read_bytes())
    originals = list(dict.fromkeys(pool_table.column("image").to_pylist()))[:20]
    rng = np.random.default_rng(0)
    model = CopyDescriptor(str(out))
    _, a, _ = model.embed(originals)
    _, b, _ = model.embed([copies.copy_of(d, "jpeg", rng) for d in originals])
    write_threshold(str(out), {"threshold": round(float(np.median(np.sum(a * b, axis=1))), 4)})
    return out
