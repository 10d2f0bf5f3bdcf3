"""One user-error type: every command reports a problem with the user's input as
curate.cli.errors.UserError, printed the same way (`Error: ...`, no traceback, exit code 2)."""

import ast
from pathlib import Path

from click.testing import CliRunner

from curate.cli import main

ROOT = Path(__file__).parents[2]


def test_the_cli_has_one_user_error_type():
    """No command module defines an error type of its own (there were UserError, LlavaError,
    EvalError and CopyDetectError)."""
    found = []
    for path in sorted(p for package in ("curate", "train") for p in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith("ClickException")
                                                      for base in node.bases):
                found.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert found == ["curate/cli/errors.py:UserError"]


def test_trainers_refusals_are_user_errors(tmp_path):
    """A trainer's refusal prints as a user error, the same for CLIP and LLaVA: one line, exit 2."""
    clip = tmp_path / "clip.yaml"
    clip.write_text("model: clip-tiny\nbatch_size: 16\n")  # no data, and none given
    result = CliRunner().invoke(main, ["train", "clip", "--config", str(clip), "--output", str(tmp_path / "c")])
    assert result.exit_code == 2 and result.output.startswith("Error: no training data"), result.output
    missing = CliRunner().invoke(main, ["eval", "--checkpoint", str(tmp_path / "none.pt")])
    assert missing.exit_code == 2 and missing.output == f"Error: checkpoint {tmp_path / 'none.pt'} not found\n"
    bad = CliRunner().invoke(main, ["train", "clip", "--config", str(tmp_path / "absent.yaml")])
    assert bad.exit_code == 2 and "absent.yaml" in bad.output and "Traceback" not in bad.output
