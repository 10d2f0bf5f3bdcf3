"""`curate ablate`: recipes -> curate -> train -> evaluate -> leaderboard, with reuse and decontamination."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture()
def ablation(tmp_path, pool_root):
    (tmp_path / "no_filter.yaml").write_text("name: no_filter\nstages:\n  - stage: decode\n")
    (tmp_path / "captioned.yaml").write_text(
        "name: captioned\nstages:\n  - stage: decode\n  - stage: caption\n    min_words: 2\n")
    (tmp_path / "train.yaml").write_text("model: clip-tiny\nbatch_size: 16\nwarmup_steps: 1\n")
    (tmp_path / "suite.yaml").write_text(f"""
tasks:
  - name: category
    kind: zeroshot
    data: {pool_root / 'eval'}
    label_column: category
  - name: captions
    kind: retrieval
    data: {pool_root / 'eval'}
    caption_column: text
""")
    path = tmp_path / "ablation.yaml"
    path.write_text(f"""
name: test_ablation
pool: {pool_root / 'pool'}
output: {tmp_path / 'runs'}
recipes:
  no_filter: {tmp_path / 'no_filter.yaml'}
  captioned: {tmp_path / 'captioned.yaml'}
train: {tmp_path / 'train.yaml'}
samples_seen: 48
seeds: [0, 1]
suite: {tmp_path / 'suite.yaml'}
eval_data: [{pool_root / 'eval'}]
decontaminate: filter
""")
    return path


def ablate(path, *extra):
    return subprocess.run([sys.executable, "-m", "curate.cli", "ablate", str(path), "--quiet", *extra],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_ablation_runs_end_to_end_and_reuses_finished_steps(ablation, tmp_path):
    result = ablate(ablation)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs"
    rows = list(csv.DictReader(open(runs / "leaderboard.csv")))
    assert {r["recipe"] for r in rows} == {"no_filter", "captioned"}
    for row in rows:
        assert row["seeds"] == "2" and 0 <= float(row["aggregate"]) <= 1
        assert float(row["aggregate"]) == pytest.approx((float(row["category"]) + float(row["captions"])) / 2)
        assert int(row["curated_size"]) <= int(row["pool_size"])
    sizes = {r["recipe"]: int(r["curated_size"]) for r in rows}
    assert sizes["captioned"] < sizes["no_filter"]
    assert (runs / "leaderboard.png").stat().st_size > 0 and "± " in (runs / "leaderboard.md").read_text()
    # every run trained for the same budget: 48 samples = 3 steps of 16
    for log in runs.glob("runs/*/seed*/log.jsonl"):
        assert len(log.read_text().splitlines()) == 3
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("runs/*/seed*/last.pt")}
    again = ablate(ablation)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained


def test_shipped_ablation_runs_with_a_small_budget(tmp_path, pool_root, concept_metadata):
    """pipelines/ablation_small.yaml as CI runs it: the test pool, a small budget through --set, and the
    balanced recipe on the test pool's concept metadata (`make pool` builds the real pool's)."""
    balanced = tmp_path / "metaclip_balance.yaml"
    shipped = (ROOT / "pipelines" / "metaclip_balance.yaml").read_text()
    balanced.write_text(shipped.replace("data/openclipart/metadata.parquet", str(concept_metadata)).replace(
        "t: 50", "t: 5"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"tasks:\n  - name: category\n    kind: zeroshot\n    data: {pool_root / 'eval'}\n"
                     f"    label_column: category\n")
    overrides = [f"pool={pool_root / 'pool'}", f"eval_data=[{pool_root / 'eval'}]", f"suite={suite}",
                 f"output={tmp_path / 'runs'}", "samples_seen=128", "seeds=[0]", "workers=1",
                 f"recipes.balanced={balanced}"]
    result = ablate(ROOT / "pipelines" / "ablation_small.yaml", *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "runs" / "leaderboard.csv")))
    assert {r["recipe"] for r in rows} == {"no_filter", "datacomp_basic", "quickstart", "balanced"}
    sizes = {r["recipe"]: int(r["curated_size"]) for r in rows}
    assert 0 < sizes["balanced"] < sizes["no_filter"]  # balancing cut the head


def test_contaminated_pool_is_refused(ablation, tmp_path, pool_root):
    pool = tmp_path / "contaminated"
    shutil.copytree(pool_root / "pool", pool)
    pq.write_table(pq.read_table(pool_root / "eval").slice(0, 3), pool / "zz-leak.parquet")
    text = ablation.read_text().replace("decontaminate: filter", "decontaminate: refuse")
    ablation.write_text(text.replace(f"pool: {pool_root / 'pool'}", f"pool: {pool}"))
    result = ablate(ablation)
    assert result.returncode == 2
    assert "holds evaluation images" in result.stderr and "eval_exact" in result.stderr


def test_shipped_llava_ablation_scores_recipes_by_captioning_and_vqa(tmp_path, pool_root):
    """pipelines/ablation_llava.yaml with a tiny budget: stage 1 on each recipe's captions, stage 2 on the
    test pool's conversation set, captioning and VQA on its eval split."""
    from train.llava.conversations import build_conversations

    conversations = build_conversations(pool_root / "pool", tmp_path / "conversations", progress=False)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"tasks:\n  - name: captions\n    kind: captioning\n    data: {pool_root / 'eval'}\n"
                     f"    caption_column: text\n  - name: vqa\n    kind: vqa\n    data: {pool_root / 'eval'}\n"
                     f"    label_column: category\n    questions: ['What category does this drawing belong to?']\n")
    overrides = [f"pool={pool_root / 'pool'}", f"eval_data=[{pool_root / 'eval'}]", f"suite={suite}",
                 f"output={tmp_path / 'runs'}", "samples_seen=32", f"stage2_data={conversations}",
                 "stage2_samples_seen=48", "seeds=[0]", "workers=1"]
    result = ablate(ROOT / "pipelines" / "ablation_llava.yaml", *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs"
    rows = list(csv.DictReader(open(runs / "leaderboard.csv")))
    assert {r["recipe"] for r in rows} == {"no_filter", "datacomp_basic", "quickstart"}
    for row in rows:
        assert float(row["aggregate"]) == pytest.approx((float(row["captions"]) + float(row["vqa"])) / 2)
        assert 0 <= float(row["vqa"]) <= 1 and float(row["captions"]) >= 0
        assert 0 <= float(row["captions BLEU-4"]) <= 1 and 0 <= float(row["captions METEOR"]) <= 1
    board = (runs / "leaderboard.md").read_text()
    assert "captions (CIDEr)" in board and "vqa (accuracy)" in board and "then stage 2 on" in board
    for recipe in ("no_filter", "datacomp_basic", "quickstart"):  # 32 samples = 2 steps of 16, then 48 = 3
        seed_dir = runs / "runs" / recipe / "seed0"
        assert len((seed_dir / "log.jsonl").read_text().splitlines()) == 2
        assert len((seed_dir / "stage2" / "log.jsonl").read_text().splitlines()) == 3
        stage2 = json.loads((seed_dir / "stage2" / "config.json").read_text())
        assert stage2["stage"] == 2 and stage2["init"] == str(seed_dir / "last.pt")


def test_llava_ablation_is_checked_before_any_work(tmp_path, pool_root):
    base = [f"pool={pool_root / 'pool'}", f"eval_data=[{pool_root / 'eval'}]", f"output={tmp_path / 'runs'}"]
    clip_suite, llava_suite = tmp_path / "clip_suite.yaml", tmp_path / "llava_suite.yaml"  # on the test pool
    clip_suite.write_text(f"tasks:\n  - name: openclipart_category\n    kind: zeroshot\n"
                          f"    data: {pool_root / 'eval'}\n    label_column: category\n")
    llava_suite.write_text(f"tasks:\n  - name: captions\n    kind: captioning\n    data: {pool_root / 'eval'}\n"
                           f"    caption_column: text\n")
    cases = [
        ("ablation_llava.yaml", [f"suite={clip_suite}"],
         "a LLaVA model is scored on captioning and vqa tasks; this suite also has openclipart_category"),
        ("ablation_small.yaml", ["stage2_data=data/x.json"],
         "stage2_data and stage2_samples_seen are for model: llava"),
        ("ablation_llava.yaml", [f"suite={llava_suite}", f"stage2_data={tmp_path / 'missing.json'}"],
         "missing.json not found"),
    ]
    for file, extra, message in cases:
        result = ablate(ROOT / "pipelines" / file, *[a for o in base + extra for a in ("--set", o)])
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "runs" / "curated").exists()


def test_training_configs_take_the_experiments_values_as_they_are(tmp_path):
    """The experiment's paths, seed and budget reach each training config as typed values: a path
    with ' #' in it stays whole (as a `key=value` string it parsed as YAML, and '#' began a comment)."""
    from curate.experiments.ablate import ExperimentConfig, training_runs

    where = tmp_path / "runs #2"
    common = {"pool": "pool", "output": str(where), "suite": "suite.yaml", "eval_data": ["eval"], "samples_seen": 64}
    clip = ExperimentConfig(name="c", train=str(ROOT / "train" / "configs" / "clip_tiny.yaml"), **common)
    [(run_dir, config)] = training_runs(clip, where / "curated #1", 7, where / "run")
    assert (run_dir, config.data, config.seed, config.samples_seen) == (where / "run", str(where / "curated #1"), 7, 64)
    llava = ExperimentConfig(name="l", model="llava", train=str(ROOT / "train" / "configs" / "llava_tiny.yaml"),
                             stage2_data=str(where / "talk #3.json"), stage2_samples_seen=48, **common)
    (_, stage1), (stage2_dir, stage2) = training_runs(llava, where / "curated #1", 7, where / "run")
    assert (stage1.stage, stage1.init, stage1.data, stage1.samples_seen) == (1, None, str(where / "curated #1"), 64)
    assert stage2_dir == where / "run" / "stage2"
    assert (stage2.stage, stage2.init, stage2.data) == (2, str(where / "run" / "last.pt"), str(where / "talk #3.json"))
    assert (stage2.seed, stage2.samples_seen, stage2.model) == (7, 48, stage1.model)
