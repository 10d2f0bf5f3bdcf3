"""`curate calibrate near_dedup`: the threshold that holds a false-merge rate on planted copies of
real pool drawings, and the recall there."""

import json
import re

import numpy as np
from click.testing import CliRunner

from curate import calibrate, copies
from curate.cli import main


def test_the_chosen_radius_holds_the_target_with_the_best_recall(pool_table):
    images = pool_table.column("image").to_pylist()
    planted = calibrate.copy_set(images, originals=15, seed=0)
    sweep = calibrate.sweep("hashes", planted)["dedup"]
    result = calibrate.calibrate("hashes", images, originals=15, target=0.02, seed=0)
    at = list(sweep.thresholds).index(result["threshold"])
    assert sweep.false_merge[at] <= 0.02 and result["recall"] == round(float(sweep.recall[at]), 4)
    assert all(sweep.recall[i] <= sweep.recall[at] for i in np.flatnonzero(sweep.false_merge <= 0.02))
    assert result["copies"] == 15 * len(copies.KINDS) and result["distinct"] == int((planted.kind == "original").sum())


def test_calibrate_command_prints_the_threshold_and_recall(pool_root):
    result = CliRunner().invoke(main, ["calibrate", "near_dedup", "--data", str(pool_root / "pool"),
                                       "--method", "hashes",
                                       "--originals", "10", "--target", "0.05"])
    assert result.exit_code == 0, result.output
    found = re.search(r"hashes: radius (\d+) holds false merges at ([\d.]+)% \(target 5.00%\) on 90 planted copies "
                      r"among [\d,]+ distinct images: recall ([\d.]+)", result.output)
    assert found and float(found.group(2)) <= 5 and 0 < float(found.group(3)) <= 1, result.output
    assert "recall by kind: border" in result.output


def test_calibrate_writes_a_descriptor_threshold(pool_root, copydetect_checkpoint, tmp_path):
    checkpoint = tmp_path / "copydetect.pt"
    checkpoint.write_bytes(copydetect_checkpoint.read_bytes())
    meta = json.loads(copydetect_checkpoint.with_suffix(".json").read_text())
    (tmp_path / "copydetect.json").write_text(json.dumps({**meta, "threshold": None}))
    result = CliRunner().invoke(main, ["calibrate", "near_dedup", "--data", str(pool_root / "pool"), "--checkpoint",
                                       str(checkpoint), "--originals", "10", "--target", "1", "--write"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "copydetect.json").read_text())
    assert written["threshold"] is not None and f"threshold (cosine) {written['threshold']}" in result.output
    assert written["calibration"]["target"] == 1 and written["architecture"] == meta["architecture"]


def test_calibrate_refuses_a_checkpoint_with_a_hash_method(pool_root, copydetect_checkpoint):
    result = CliRunner().invoke(main, ["calibrate", "near_dedup", "--data", str(pool_root / "pool"),
                                       "--method", "phash",
                                       "--checkpoint", str(copydetect_checkpoint)])
    assert result.exit_code == 2 and "--checkpoint goes with methods descriptor and verified" in result.output


def test_calibrate_command_sweeps_the_verified_inlier_count(pool_root, copydetect_checkpoint):
    result = CliRunner().invoke(main, ["calibrate", "near_dedup", "--data", str(pool_root / "pool"),
                                       "--method", "verified", "--checkpoint", str(copydetect_checkpoint),
                                       "--originals", "10", "--target", "0.2"])
    assert result.exit_code == 0, result.output
    found = re.search(r"verified: inliers (\d+) holds false merges at ([\d.]+)% \(target 20.00%\) on 90 planted "
                      r"copies among [\d,]+ distinct images: recall ([\d.]+)", result.output)
    assert found and 3 <= int(found.group(1)) <= calibrate.MAX_INLIERS and float(found.group(2)) <= 20, result.output
    assert float(found.group(3)) >= 0.5, result.output  # crops, rotations and borders verify
