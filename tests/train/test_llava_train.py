"""The LLaVA trainer on the shared loop: stage 1 trains only the projector and its loss goes
down, stage 2 trains projector and LM on conversations, the tower never moves, resume is
exact, 2 DDP processes train as one, stage-2 data errors name the record."""

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from curate.config import ConfigError
from train.llava.config import LlavaTrainConfig, load_llava_config
from train.llava.data import load_conversations
from train.llava.train import train_llava

BASE = {"batch_size": 8, "lr": 0.01, "warmup_steps": 1, "seed": 3}


@pytest.fixture(scope="module")
def captions(pool_table, tmp_path_factory):
    """Eight real caption pairs as a Parquet shard."""
    path = tmp_path_factory.mktemp("shard") / "part.parquet"
    pq.write_table(pool_table.slice(0, 8).select(["uid", "text", "image"]), path)
    return path


def log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def weights(path):
    return torch.load(path, weights_only=False)["state_dict"]


def assert_tower_unchanged(state, clip_checkpoint):
    clip = torch.load(clip_checkpoint, weights_only=False)["state_dict"]
    tower = {k[len("vision."):]: v for k, v in state.items() if k.startswith("vision.")}
    assert tower and all(torch.equal(v, clip[k]) for k, v in tower.items())


def lm_changed(state, tiny_lm) -> list[bool]:
    start = AutoModelForCausalLM.from_pretrained(tiny_lm).state_dict()
    return [not torch.equal(state["lm." + k], v) for k, v in start.items()]


@pytest.fixture(scope="module")
def stage1(llava_model_config, captions, tmp_path_factory):
    config = LlavaTrainConfig(model=llava_model_config, stage=1, data=str(captions), samples_seen=8 * 10,
                              checkpoint_every=5, **BASE)
    run = tmp_path_factory.mktemp("stage1")
    train_llava(config, run, progress=False)
    return run


def test_stage1_trains_only_the_projector_and_learns(stage1, tiny_lm, clip_checkpoint):
    losses = [r["token_loss"] for r in log(stage1)]
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
    state = weights(stage1 / "last.pt")
    assert not any(lm_changed(state, tiny_lm))
    assert_tower_unchanged(state, clip_checkpoint)
    middle = weights(stage1 / "step-000005.pt")
    assert all(not torch.equal(middle[k], state[k]) for k in state if k.startswith("projector."))


def test_stage2_trains_projector_and_lm_from_stage1_and_resumes_exactly(stage1, llava_model_config, conversations,
                                                                        tiny_lm, clip_checkpoint, tmp_path):
    config = LlavaTrainConfig(model=llava_model_config, stage=2, data=str(conversations), init=str(stage1 / "last.pt"),
                              samples_seen=8 * 6, checkpoint_every=3, **{**BASE, "lr": 0.002})
    train_llava(config, tmp_path / "full", progress=False)
    full = log(tmp_path / "full")
    state = weights(tmp_path / "full" / "last.pt")
    assert all(lm_changed(state, tiny_lm))
    assert_tower_unchanged(state, clip_checkpoint)
    start = weights(stage1 / "last.pt")
    assert any(not torch.equal(start[k], state[k]) for k in state if k.startswith("projector."))
    # a run stopped after step 3 (its checkpoint and log) and started again
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tmp_path / "full" / "step-000003.pt", resumed / "last.pt")
    (resumed / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:3]))
    train_llava(config, resumed, progress=False)
    assert [r["loss"] for r in log(resumed)] == [r["loss"] for r in full]  # to the last bit
    other = weights(resumed / "last.pt")
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_two_ddp_processes_train_as_one(captions, clip_checkpoint, tmp_path):
    """The tiny LM built from lm_config (rank 0 writes it), 1 vs 2 processes through the CLI."""
    config = tmp_path / "c.yaml"
    model = {"vision": str(clip_checkpoint), "lm_config": "llava-lm-tiny", "vocab_size": 400, "pixel_shuffle": 2,
             "region_size": 128}
    config.write_text(yaml.safe_dump({"model": model, "samples_seen": 8 * 3, **BASE}))
    for nproc in (1, 2):
        result = subprocess.run([sys.executable, "-m", "curate.cli", "train", "llava", "--config", str(config),
                                 "--data", str(captions), "--output", str(tmp_path / f"n{nproc}"), "--nproc",
                                 str(nproc)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = log(tmp_path / "n1"), log(tmp_path / "n2")
    assert [r["answer_tokens"] for r in one] == [r["answer_tokens"] for r in two]
    assert [r["token_loss"] for r in one] == pytest.approx([r["token_loss"] for r in two], rel=1e-4)
    a, b = weights(tmp_path / "n1" / "last.pt"), weights(tmp_path / "n2" / "last.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a if k.startswith("projector."))  # Adam: float noise


def test_conversation_errors_name_the_record(conversations, tmp_path):
    samples = load_conversations(conversations)
    bare = next(s for s in samples if "'bare'" in s.source)
    assert bare.conversation[0]["value"].startswith("<image>\n")  # the image goes before the first turn
    pair = next(s for s in samples if "'pair'" in s.source)
    assert len(pair.images) == 2
    records = json.loads((conversations / "train.json").read_text())
    bad = tmp_path / "bad.jsonl"
    good = {**records[0], "image": str(conversations / records[0]["image"])}  # absolute paths work too
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**records[1], "image": "images/missing.jpg"}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"bad.jsonl: record 1 \(id .*\): image file\(s\) not found: .*missing"):
        load_conversations(bad)
    bad.write_text(json.dumps({"id": "x", "conversations": "hi"}) + "\n")
    with pytest.raises(ValueError, match=r"record 0 \(id 'x'\): expected 'conversations'"):
        load_conversations(bad)


def test_config_errors_name_the_key(tmp_path, llava_model_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {**llava_model_config, "lm_config": "llava-lm-tiny"}}))
    with pytest.raises(ConfigError, match="model: .*exactly one of lm"):
        load_llava_config(path)
    path.write_text(yaml.safe_dump({"model": llava_model_config}))
    with pytest.raises(ConfigError, match="stage: Input should be 1 or 2"):
        load_llava_config(path, ["stage=3"])
