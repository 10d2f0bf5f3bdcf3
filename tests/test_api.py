"""The Python API for notebooks: curate.run and curate.load_pipeline."""

import json
from pathlib import Path

import pytest

import curate
from curate.config import ConfigError
from curate.engines import make_engine

RECIPES = Path(__file__).parents[1] / "pipelines"


def test_load_pipeline_with_overrides():
    pipeline = curate.load_pipeline(RECIPES / "quickstart.yaml", ["stages[1].min_words=4"])
    assert [s.name for s in pipeline.stages][:2] == ["decode", "caption"]
    assert pipeline.stages[1].config.min_words == 4
    with pytest.raises(ConfigError, match="did you mean 'min_words'"):
        curate.load_pipeline(RECIPES / "quickstart.yaml", ["stages[1].min_wrods=4"])


def test_run_returns_the_stats(tmp_path, pool_root):
    out = tmp_path / "out"
    stats = curate.run(str(RECIPES / "quickstart.yaml"), input=str(pool_root / "pool"), output=str(out), workers=1,
                       overrides=["stages[1].min_words=3"], limit=100)
    assert stats == json.loads((out / "stats.json").read_text())
    assert stats["input"] == 100 and stats["kept"] + stats["rejected"] == 100
    run = json.loads((out / "run.json").read_text())
    assert run["pipeline"]["stages"][1]["min_words"] == 3 and run["command"].startswith("curate.run(")
    again = curate.run(curate.load_pipeline(RECIPES / "quickstart.yaml", ["stages[1].min_words=3", "limit=100"]),
                       input=str(pool_root / "pool"), output=str(out), engine=make_engine("local", 1))
    assert again["resumed_complete"] and again["kept"] == stats["kept"]  # the same run: reused
    with pytest.raises(ValueError, match="unknown engine 'dask'"):
        curate.run(str(RECIPES / "quickstart.yaml"), engine="dask")
