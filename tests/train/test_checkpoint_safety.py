"""Checkpoints never run code: a torch file whose pickle would call something is refused by every
loader before it runs (the marker it would create never appears); the trainers' own checkpoints
load weights-only."""

import pathlib
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from curate.cli.eval import DEFAULT_SUITE, eval_command
from curate.models.checkpoint import UnsafeCheckpointError, load_torch_file
from curate.models.clip import create_clip, load_checkpoint, save_checkpoint
from curate.models.llava.model import load_checkpoint as load_llava


class TouchOnLoad:
    """Unpickles as `Path(marker).touch()`: a stand-in for os.system in a hostile checkpoint."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture()
def hostile(tmp_path, clip_checkpoint):
    """A real clip-tiny checkpoint with one extra entry that touches `marker` when unpickled."""
    marker = tmp_path / "ran.marker"
    data = torch.load(clip_checkpoint, weights_only=True)
    path = tmp_path / "evil.pt"
    torch.save({**data, "step": TouchOnLoad(marker)}, path)
    return path, marker


def test_the_hostile_file_does_run_code_when_loaded_unsafely(tmp_path, hostile):
    """The fixture is a real threat: a plain pickle load creates the marker."""
    path, marker = hostile
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_curate_eval_refuses_a_checkpoint_that_would_run_code(hostile):
    path, marker = hostile
    result = CliRunner().invoke(eval_command, ["--checkpoint", str(path), "--suite", str(DEFAULT_SUITE)])
    assert result.exit_code == 2, result.output
    assert f"cannot load checkpoint {path}" in result.output and "weights-only load refuses" in result.output
    assert "Unsupported global: GLOBAL getattr" in result.output and "Traceback" not in result.output
    assert not marker.exists()


def test_every_loader_refuses_it(hostile):
    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError, match="evil.pt is not a curate CLIP checkpoint"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt is not a LLaVA checkpoint"):
        load_llava(path)
    assert not marker.exists()


def test_a_clip_score_run_refuses_it(tmp_path, hostile, pool_root):
    path, marker = hostile
    recipe = tmp_path / "score.yaml"
    recipe.write_text(f"name: score\nstages:\n  - stage: decode\n  - stage: clip_score\n"
                      f"    checkpoint: {path}\n    top_fraction: 0.5\n")
    result = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(recipe), "--input",
                             str(pool_root / "pool"), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{path} is not a curate CLIP checkpoint" in result.stderr and "weights-only" in result.stderr
    assert not marker.exists()


def test_trainer_checkpoints_load_weights_only(tmp_path, llava_checkpoint):
    clip = create_clip("clip-tiny")
    save_checkpoint(tmp_path / "clip.pt", clip, step=3, config={"lr": 0.1, "data": None})
    data = torch.load(tmp_path / "clip.pt", weights_only=True)
    assert data["step"] == 3 and data["model_name"] == "clip-tiny"
    again, rest = load_checkpoint(tmp_path / "clip.pt")
    assert rest == {"model_name": "clip-tiny", "step": 3, "config": {"lr": 0.1, "data": None}}
    for key, value in clip.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key
    assert load_torch_file(llava_checkpoint, "a LLaVA checkpoint")["kind"] == "llava"


def test_a_file_that_is_no_pickle_says_so(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt is not a LLaVA checkpoint: not a torch checkpoint file"):
        load_torch_file(path, "a LLaVA checkpoint")
