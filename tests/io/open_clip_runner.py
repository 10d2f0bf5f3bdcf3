"""open_clip's own trainer (`open_clip_train.main`) on WebDataset shards, in a subprocess, with our
model configs registered: what a user of open_clip would run on curate's output."""

import os
import re
import subprocess
import sys
from pathlib import Path

from curate.models.clip import MODEL_CONFIGS

SCRIPT = f"""
import sys
import open_clip
open_clip.add_model_config({str(MODEL_CONFIGS)!r})
from open_clip_train.main import main
main(sys.argv[1:])
"""


def train_open_clip(train_data: str, folder: Path, *extra: str) -> tuple[int, str, list[tuple[int, int]]]:
    """One epoch of clip-tiny (batch 16, CPU, fp32) on `train_data` (a brace pattern of tars), run in
    `folder`: (exit code, the log, the (samples done, epoch size) of each logged step)."""
    args = ["--train-data", train_data, "--dataset-type", "webdataset", "--model", "clip-tiny", "--batch-size", "16",
            "--epochs", "1", "--workers", "1", "--precision", "fp32", "--device", "cpu", "--logs", str(folder / "logs"),
            "--report-to", "", "--save-frequency", "0", "--log-every-n-steps", "1", *extra]
    result = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=folder,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    log = result.stdout + result.stderr
    steps = [(int(done), int(total)) for done, total in re.findall(r"Train Epoch: 0 \[\s*(\d+)/(\d+)", log)]
    return result.returncode, log, steps
