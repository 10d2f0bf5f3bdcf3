"""`curate eval` on the shipped default suite (the pool's eval split and the digits), run where
a pool was built: here a small real one, linked where the suite looks for it."""

import json

from click.testing import CliRunner

from curate.cli.eval import DEFAULT_SUITE, eval_command
from curate.models.clip import create_clip, save_checkpoint


def test_default_suite_gives_numbers_in_range(tmp_path, pool_root, monkeypatch):
    (tmp_path / "data" / "openclipart").mkdir(parents=True)
    (tmp_path / "data" / "openclipart" / "eval").symlink_to(pool_root / "eval")
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "run" / "last.pt"
    save_checkpoint(checkpoint, create_clip("clip-tiny"))
    result = CliRunner().invoke(eval_command, ["--checkpoint", str(checkpoint), "--suite", str(DEFAULT_SUITE),
                                               "--device", "cpu"])
    assert result.exit_code == 0, result.output
    results = json.loads((checkpoint.parent / "results.json").read_text())
    assert set(results["tasks"]) == {"openclipart_category", "openclipart_captions", "digits"}
    assert results["tasks"]["digits"]["n"] == 1797  # scikit-learn's digits, written on first use
    mains = [task["main"] for task in results["tasks"].values()]
    assert all(0.0 <= m <= 1.0 for m in mains) and results["aggregate"] == sum(mains) / 3
