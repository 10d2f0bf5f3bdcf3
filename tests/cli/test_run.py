"""`curate run`, `validate`, `stages` and `--version`: exit codes, messages and the run contract."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from curate.cli import main
from curate.stages import REGISTRY

RECIPES = Path(__file__).parents[2] / "pipelines"


def test_stages_lists_every_stage_with_parameters():
    result = CliRunner().invoke(main, ["stages"])
    assert result.exit_code == 0
    for name in REGISTRY:
        assert f"\n{name} (" in "\n" + result.output
    assert "min_words: int = 0" in result.output and "rejects: missing_image" in result.output


def test_validate_good_and_bad(tmp_path, pool_root):
    ok = CliRunner().invoke(main, ["validate", str(RECIPES / "datacomp_basic.yaml"),
                                   "--input", str(pool_root / "pool")])
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


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    from importlib.metadata import version

    assert result.output.strip() == f"curate {version('curate')}"


def test_stages_shows_the_values_a_parameter_allows():
    output = CliRunner().invoke(main, ["stages"]).output
    resize = output[output.index("\nresize ("):]
    assert "resize_mode: Literal = 'border'" in resize
    assert "      allowed: no, keep_ratio, keep_ratio_largest, center_crop, border" in resize
    exact = output[output.index("\nexact_dedup ("):]
    assert "      allowed: image, image_text, url_text" in exact[:exact.index("rejects:")]
    language = output[output.index("\nlanguage ("):]
    assert "allowed: af, als, am," in language[:language.index("rejects:")]


def test_validate_names_every_missing_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\ninput: {tmp_path}/no-pool\nstages:\n  - stage: decode\n"
                    f"  - stage: concept_match\n    metadata: {tmp_path}/none.parquet\n"
                    f"  - stage: clip_score\n    checkpoint: {tmp_path}/runs/last.pt\n    threshold: 0.2\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.output.removeprefix("Error: ").splitlines() == [
        f"{path}: input: {tmp_path}/no-pool: no such file or folder",
        f"{path}: stages[1].metadata: {tmp_path}/none.parquet: no such file or folder (an entry list: build it "
        "with `curate metadata build --out FILE`)",
        f"{path}: stages[2].checkpoint: {tmp_path}/runs/last.pt: no such file or folder (a checkpoint: train one "
        "with `curate train clip` (clip_score) or `curate train llava` (recaption))",
    ]
    given = CliRunner().invoke(main, ["validate", str(path), "--input", str(tmp_path / "elsewhere")])
    assert f"input: {tmp_path}/elsewhere: no such file or folder" in given.output


def test_validate_refuses_an_ablation_file():
    result = CliRunner().invoke(main, ["validate", str(RECIPES / "ablation_small.yaml")])
    assert result.exit_code == 2
    assert "this is an ablation file (it has 'recipes:'), not a pipeline file: use curate ablate" in result.output


def curate_run(*args, timeout=300):
    """`curate run ARGS` in a subprocess (progress bars on, as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "curate.cli", "run", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_run_limit_reads_only_the_first_samples(tmp_path, pool_root):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    result = curate_run(RECIPES / "quickstart.yaml", "--input", pool_root / "pool", "--output", out, "--workers", "1",
                        "--limit", 50)
    assert result.returncode == 0, result.stderr
    stats = json.loads((out / "stats.json").read_text())
    kept = pq.read_table(out / "parquet").column("uid").to_pylist()
    rejected = pq.read_table(out / "rejected.parquet").column("uid").to_pylist()
    assert stats["input"] == 50 == len(kept) + len(rejected)
    first = [u for p in sorted((pool_root / "pool").glob("*.parquet"))
             for u in pq.read_table(p).column("uid").to_pylist()]
    assert set(kept) | set(rejected) == set(first[:50])  # the first 50, across the first two row groups
    assert json.loads((out / "run.json").read_text())["pipeline"]["limit"] == 50


def test_run_limit_on_tars_counts_samples(tmp_path, pool_root):
    import pyarrow.parquet as pq

    first = tmp_path / "first"
    assert curate_run(RECIPES / "no_filter.yaml", "--input", pool_root / "pool", "--output", first, "--workers",
                      "1").returncode == 0
    out = tmp_path / "again"
    result = curate_run(RECIPES / "no_filter.yaml", "--input", first / "shards", "--output", out, "--limit", 7)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "stats.json").read_text())["input"] == 7
    assert pq.read_table(out / "parquet").num_rows + pq.read_table(out / "rejected.parquet").num_rows == 7


def test_run_records_how_the_output_was_made(tmp_path, pool_root):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    result = curate_run(RECIPES / "quickstart.yaml", "--input", pool_root / "pool", "--output", out, "--workers", "1",
                        "--set", "stages[1].min_words=3")
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["pipeline"]["stages"][1]["min_words"] == 3  # resolved after --set
    assert run["pipeline_file"] == str(RECIPES / "quickstart.yaml")
    command = shlex.split(run["command"])
    assert command[:2] == ["curate", "run"] and command[-2:] == ["--set", "stages[1].min_words=3"]
    from importlib.metadata import version

    assert run["curate_version"] == version("curate") and (run["engine"], run["workers"]) == ("local", 1)
    files = sorted((pool_root / "pool").glob("*.parquet"))
    assert [(f["path"], f["kind"], f["bytes"], f["tasks"], f["rows"]) for f in run["inputs"]] == [
        (str(p), "parquet", p.stat().st_size, 2, pq.ParquetFile(p).metadata.num_rows) for p in files]
    assert run["started"] <= run["finished"] and run["finished"].endswith("+00:00")
    report = (out / "report.html").read_text()
    assert "0.1.0" in report and "min_words: 3" in report and run["started"] in report


def test_resume_says_what_it_does_and_bars_name_their_stages(tmp_path, pool_root):
    from tests.engines.helpers import kill_after_first_task

    out = tmp_path / "out"
    command = [sys.executable, "-m", "curate.cli", "run", str(RECIPES / "quickstart.yaml"), "--input",
               str(pool_root / "pool"), "--output", str(out), "--workers", "1"]
    kill_after_first_task(command, out)
    done = len(list((out / "_work" / "done").glob("pass0-*.json")))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming: {done} of 4 tasks of pass 1 done" in result.stderr
    assert "pass 1/3: decode, caption, language, image_size, exact_dedup (fit)" in result.stderr
    assert "pass 3/3: near_dedup" in result.stderr
