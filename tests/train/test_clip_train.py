"""The CLIP trainer on curated shards: loss goes down, resume is exact, 2-process DDP with
global negatives gives the 1-process loss, SigLIP trains, configs are validated."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from curate.config import ConfigError
from curate.engines import LocalEngine
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from train.clip.config import ClipTrainConfig, load_clip_config
from train.clip.train import train_clip

BASE = {"model": "clip-tiny", "batch_size": 16, "lr": 0.002, "warmup_steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def curated(pool_root, tmp_path_factory):
    """Shards written by `curate run` from the real pool."""
    out = tmp_path_factory.mktemp("curated") / "out"
    pipeline = parse_pipeline({"name": "t", "stages": [{"stage": "decode"}, {"stage": "caption", "min_words": 1}]},
                              "<t>")
    run_pipeline(pipeline, LocalEngine(progress=False), [str(pool_root / "pool")], out)
    return out


def log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_loss_goes_down_and_resume_is_exact(curated, tmp_path):
    config = ClipTrainConfig(**BASE, data=str(curated), samples_seen=16 * 12, checkpoint_every=6)
    train_clip(config, tmp_path / "full", progress=False)
    full = log(tmp_path / "full")
    assert [r["step"] for r in full] == list(range(1, 13))
    losses = [r["loss"] for r in full]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # a run stopped after step 6 (its checkpoint and log) and started again
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tmp_path / "full" / "step-000006.pt", resumed / "last.pt")
    (resumed / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:6]))
    train_clip(config, resumed, progress=False)
    again = log(resumed)
    assert [r["loss"] for r in again] == losses  # the same curve, to the last bit
    final = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    other = torch.load(resumed / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], other[k]) for k in final)


def test_two_ddp_processes_see_global_negatives(curated, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in BASE.items()))
    args = ["--config", str(config), "--data", str(curated), "--samples-seen", str(16 * 4)]
    for nproc in (1, 2):
        result = subprocess.run([sys.executable, "-m", "curate.cli", "train", "clip", *args,
                                 "--output", str(tmp_path / f"n{nproc}"), "--nproc", str(nproc)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = log(tmp_path / "n1"), log(tmp_path / "n2")
    assert len(two) == 4 and (tmp_path / "n2" / "last.pt").exists()
    # step 1 scores the same 16 samples against each other before any update: with negatives
    # gathered across both ranks, the 2-process loss is the 1-process loss
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-3)
    assert two[-1]["loss"] < two[0]["loss"]  # and it learns


def test_siglip_trains(curated, tmp_path):
    config = ClipTrainConfig(**BASE, loss="siglip", data=str(curated), samples_seen=16 * 8)
    train_clip(config, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in log(tmp_path / "run")]
    assert all(loss == loss and loss > 0 for loss in losses) and losses[-1] < losses[0]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state_dict"]
    assert "logit_bias" in state


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: clip-tiny\nbatch_size: 10\ngrad_accum: 3\n")
    with pytest.raises(ConfigError, match="grad_accum"):
        load_clip_config(path)
    path.write_text("model: clip-tiny\nloss: triplet\n")
    with pytest.raises(ConfigError, match=rf"{path}: loss: Input should be 'infonce' or 'siglip'"):
        load_clip_config(path)


def test_one_process_trains_here_on_the_config_the_command_validated(curated, tmp_path, monkeypatch):
    """`curate train clip` with one process trains in this process, on the config it validated: no
    child process, and --data and --samples-seen as given (a path with ' #' stays whole; as a
    `key=value` string it was parsed as YAML, where '#' begins a comment)."""
    from click.testing import CliRunner

    from curate.cli import main

    data = tmp_path / "curated #1"
    shutil.copytree(curated, data)
    config = tmp_path / "c.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in BASE.items()))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"a child process: {a}"))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "clip", "--config", str(config), "--data", str(data),
                                       "--samples-seen", "32", "--output", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "config.json").read_text())
    assert (written["data"], written["samples_seen"]) == (str(data), 32)
    assert [r["step"] for r in log(out)] == [1, 2]
