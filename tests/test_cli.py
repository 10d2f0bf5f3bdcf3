"""The command line: exit codes, messages and the run contract."""

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from curate.cli import main
from curate.stages import REGISTRY

RECIPES = Path(__file__).parents[1] / "pipelines"


def test_stages_lists_every_stage_with_parameters():
    result = CliRunner().invoke(main, ["stages"])
    assert result.exit_code == 0
    for name in REGISTRY:
        assert f"\n{name} (" in "\n" + result.output
    assert "min_words: int = 0" in result.output and "rejects: missing_image" in result.output


def test_validate_good_and_bad(tmp_path):
    ok = CliRunner().invoke(main, ["validate", str(RECIPES / "datacomp_basic.yaml")])
    assert ok.exit_code == 0 and "decode -> caption -> language -> image_size" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - stage: decode\n  - stage: caption\n    min_chars: lots\n")
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: stages[1].min_chars" in result.output and "Traceback" not in result.output


def test_run_writes_the_documented_layout(tmp_path, faulty_input):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "curate.cli", "run", str(RECIPES / "datacomp_basic.yaml"), "--input", str(faulty_input),
         "--output", str(out), "--workers", "2", "--set", "stages[1].min_words=2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in ("shards", "parquet", "rejected.parquet", "stats.json", "report.html", "uids.npy"):
        assert (out / name).exists(), name
    assert "kept" in result.stdout and "report:" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(RECIPES / "datacomp_basic.yaml"),
                              "--input", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "o2")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nothing-here: no such file or folder" in missing.stderr
