"""`curate train copydetect`: a copy descriptor trained on the pool's own images, never on its held-out
families, saved as a weights-only state dict and a JSON the stages read."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from curate import copies
from curate.cli import main
from curate.models.copydetect import CopyDescriptor, DescriptorArchitecture
from train.copydetect.train import CopyDetectConfig, training_images


def test_training_never_reads_a_held_out_family(pool_root):
    config = CopyDetectConfig(data=[str(pool_root / "pool")], output="unused", batch_size=8)
    train, held = training_images(config)
    found = copies.read_images([str(pool_root / "pool")])
    is_held = copies.heldout([copies.family(url, uid) for uid, url in zip(found["uid"], found["url"])])
    held_bytes = {d for d, h in zip(found["image"], is_held) if h}
    assert held and set(held) == held_bytes
    assert not held_bytes & set(train)
    assert len(copies.distinct(copies.thumbnails(train))) == len(train)  # no image twice, a batch's own negative


def test_train_command_writes_a_loadable_calibrated_checkpoint(pool_root, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "copydetect", "--data", str(pool_root / "pool"), "--output", str(out),
                                       "--steps", "3", "--batch-size", "8", "--size", "32",
                                       "--calibrate-originals", "6"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "copydetect.json").read_text())
    assert DescriptorArchitecture(**meta["architecture"]).size == 32 and meta["trained"]["steps"] == 3
    assert meta["calibration"]["copies"] == 6 * len(copies.KINDS)
    assert f"{out}/copydetect.pt" in result.output
    weights = torch.load(out / "copydetect.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert len((out / "log.jsonl").read_text().splitlines()) == 2  # steps 0 and 2
    rows, vectors, failures = CopyDescriptor(str(out / "copydetect.pt")).embed(
        [pool_root.joinpath("pool").glob("*.parquet").__next__().read_bytes(), None])
    assert list(rows) == [] and set(failures) == {0, 1} and vectors.shape == (0, 128)


def test_descriptors_are_unit_vectors_of_the_images(pool_table, tmp_path, pool_root):
    out = tmp_path / "run"
    CliRunner().invoke(main, ["train", "copydetect", "--data", str(pool_root / "pool"), "--output", str(out),
                              "--steps", "2", "--batch-size", "8", "--size", "32", "--calibrate-originals", "0"])
    assert json.loads((out / "copydetect.json").read_text())["threshold"] is None
    images = pool_table.column("image").to_pylist()[:5]
    rows, vectors, failures = CopyDescriptor(str(out / "copydetect.pt")).embed(images)
    assert list(rows) == list(range(5)) and not failures
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5) and vectors.shape == (5, 128)
