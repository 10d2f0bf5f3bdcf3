"""The README's commands run as written, in a fresh folder laid out as a clone after `make demo`
(a tiny pool rendered by `curate sample openclipart`, its metadata and conversations, the demo
run), with tiny budgets appended: the tour (fast), and the training, evaluation, LLaVA and
balancing walk-throughs (slow)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
README = REPO / "README.md"
POOL_DRAWINGS = 120
# Budgets appended to a command (by its first words), so each finishes in seconds on a tiny pool.
BUDGETS = {
    "curate sample openclipart": ["--limit", str(POOL_DRAWINGS)],
    "curate train clip": ["--samples-seen", "64"],
    "curate train llava": ["--set", "samples_seen=8", "--set", "batch_size=8"],
    "curate caption": ["--batch-size", "8", "--max-new-tokens", "4"],
    "curate ablate": ["--set", "samples_seen=64", "--set", "seeds=[0]"],
    "curate bootstrap": ["--set", "samples_seen=64", "--set", "rounds=1"],
}
# Commands that need what a test machine has not (a bucket, a second node, a Docker daemon, the
# user's own files): named here, so that a new README command is run unless it is listed.
NOT_RUN = {
    "curate train clip --config train/configs/clip_tiny.yaml --data 's3://bucket/run/shards/part-{00000..00999}.tar'":
        "an S3 bucket and two nodes",
    "curate metadata build --out my.txt --no-wordnet --corpus shards/ --file extra.txt":
        "the user's own corpus and word list",
    "curate run pipelines/laion_filter.yaml --engine ray --address": "a Ray cluster",
    "curate run pipelines/laion_filter.yaml --engine spark --master": "a Spark master",
    "docker compose": "a Docker daemon",
}


def readme_commands(section: str) -> list[str]:
    """The shell commands of the README section's code blocks (not its python or yaml blocks),
    continuation lines joined, comments dropped."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"\n```\n(.*?)\n```", body, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def fresh_clone(root: Path) -> Path:
    """A folder laid out like the repository (its recipes and configs), to run commands in."""
    for name in ("pipelines", "train"):
        (root / name).symlink_to(REPO / name)
    return root


def run(command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a README command as written, with its budget appended; curate is this checkout's."""
    if any(command.startswith(prefix) for prefix in NOT_RUN):
        return None
    words = shlex.split(command)
    extra = next((budget for prefix, budget in BUDGETS.items() if command.startswith(prefix)), [])
    if words[0] == "curate":
        argv = [sys.executable, "-m", "curate.cli", *words[1:], *extra]
    elif words[:2] == ["python", "-m"]:
        argv = [sys.executable, *words[1:], *extra]
    else:
        raise AssertionError(f"README command neither curate nor python -m: {command}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def make_demo(root: Path) -> None:
    """What `make demo` leaves beside the code: the pool, its metadata and conversations, the demo run."""
    run("curate sample openclipart --out data/openclipart", root)
    run("curate metadata build --out data/openclipart/metadata.parquet --corpus data/openclipart/pool", root)
    run("python -m train.llava.conversations --pool data/openclipart/pool --out data/openclipart/conversations "
        "--eval data/openclipart/eval --quiet", root)
    run("curate run pipelines/quickstart.yaml --overwrite", root)


def test_the_makefile_demo_builds_what_the_readme_uses():
    makefile = (REPO / "Makefile").read_text()
    demo = re.search(r"^demo: (.*)$", makefile, re.M).group(1)
    assert "$(CONVERSATIONS)" in demo and "$(METADATA)" in demo and "$(POOL)" in demo
    assert "CONVERSATIONS := data/openclipart/conversations/train.json" in makefile
    for section in ("Training a LLaVA", "Scoring data with a LLaVA"):
        assert any("data/openclipart/conversations" in c for c in readme_commands(section))


def test_the_tour_runs_as_written(tmp_path):
    root = fresh_clone(tmp_path)
    commands = readme_commands("A tour")
    assert commands[0].startswith("curate sample openclipart") and len(commands) >= 8
    outputs = [run(command, root) for command in commands]
    assert "curate " in outputs[-1].stdout  # curate --version
    assert (root / "out/qs/report.html").is_file() and (root / "out/try/run.json").is_file()
    assert (root / "inspect-too_few_words.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("section", ["Scoring data: train, evaluate, ablate", "Training a LLaVA",
                                     "Scoring data with a LLaVA", "Concept balancing (MetaCLIP)", "Engines"])
def test_the_walkthroughs_run_with_tiny_budgets(tmp_path, section):
    root = fresh_clone(tmp_path)
    make_demo(root)
    if section == "Scoring data with a LLaVA":  # it scores the LLaVA that "Training a LLaVA" trains
        for command in readme_commands("Training a LLaVA"):
            run(command, root)
    skipped = [c for c in readme_commands(section) if run(c, root) is None]
    assert all(any(c.startswith(p) for p in NOT_RUN) for c in skipped)
