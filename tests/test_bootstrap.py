"""`curate bootstrap`: each round's CLIP curates the next round's data; every round is scored."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).parents[1]


def bootstrap(*args):
    return subprocess.run([sys.executable, "-m", "curate.cli", "bootstrap", *map(str, args), "--quiet"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


def kept_uids(folder: Path) -> set[str]:
    return set(pq.read_table(folder / "parquet", columns=["uid"]).column("uid").to_pylist())


def test_shipped_bootstrap_runs_two_rounds_and_ranks_each(tmp_path, pool_root):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"tasks:\n  - name: category\n    kind: zeroshot\n    data: {pool_root / 'eval'}\n"
                     f"    label_column: category\n")
    (tmp_path / "base.yaml").write_text("name: base\nstages:\n  - stage: decode\n"
                                        "  - stage: caption\n    min_words: 2\n")
    overrides = [f"pool={pool_root / 'pool'}", f"eval_data=[{pool_root / 'eval'}]", f"suite={suite}",
                 f"output={tmp_path / 'runs'}", f"base={tmp_path / 'base.yaml'}", "samples_seen=64", "seeds=[0]",
                 "workers=2", "rounds=2", "top_fraction=0.5"]  # curation forks after training
    args = [ROOT / "pipelines" / "bootstrap_small.yaml", *[a for o in overrides for a in ("--set", o)]]
    result = bootstrap(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs"
    rows = {r["recipe"]: r for r in csv.DictReader(open(runs / "leaderboard.csv"))}
    assert set(rows) == {"round0", "round1", "round2"}
    assert "round2" in result.stdout and "round1's model" in (runs / "leaderboard.md").read_text()

    curated = {name: kept_uids(runs / "curated" / name) for name in rows}
    for name in ("round1", "round2"):  # the top half of the base-filtered set (ties kept), then decontaminated
        assert curated[name] < curated["round0"]
        stats = json.loads((runs / "curated" / name / "stats.json").read_text())
        scored = next(s for s in stats["stages"] if s["key"].endswith(":clip_score"))
        assert math.ceil(0.5 * scored["in"]) <= scored["out"] < scored["in"]
        assert [s["name"] for s in stats["stages"]][-1] == "decontaminate"
    assert curated["round1"] != curated["round2"]  # a different scorer picked different data
    scorers = [runs / "runs" / f"round{i}" / "seed0" / "last.pt" for i in range(3)]
    assert all(p.is_file() for p in scorers)

    stamps = {p: p.stat().st_mtime_ns for p in scorers}
    again = bootstrap(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in scorers} == stamps  # every finished round is reused


def test_missing_base_recipe_is_a_clear_error(tmp_path):
    result = bootstrap(ROOT / "pipelines" / "bootstrap_small.yaml", "--set", f"base={tmp_path / 'nope.yaml'}",
                       "--set", f"output={tmp_path}")
    assert result.returncode == 2 and "nope.yaml not found" in result.stderr
