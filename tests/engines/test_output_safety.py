"""--overwrite never deletes inputs or user files: an output that holds or lies inside an input is
refused, and replacing a run removes only what curate wrote (its parts, ledger, stats, _work and
its own temporaries)."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.engines.local import LocalEngine
from curate.io.writers import remove_temp_files
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline

RECIPES = Path(__file__).parents[2] / "pipelines"


@pytest.fixture()
def small_input(tmp_path, pool_root) -> Path:
    """One real 80-row Parquet file of the pool, in its own folder."""
    folder = tmp_path / "input"
    folder.mkdir()
    shutil.copy(sorted((pool_root / "pool").glob("*.parquet"))[0], folder / "a.parquet")
    return folder


def run(recipe: str, inputs, out, overwrite=False) -> dict:
    return run_pipeline(load_pipeline(RECIPES / recipe), LocalEngine(1, progress=False), inputs, out, overwrite)


def test_an_output_holding_its_own_input_is_refused_and_the_input_stays(tmp_path, small_input):
    out = tmp_path / "out"
    first = run("no_filter.yaml", [str(small_input)], out)
    shards = sorted((out / "shards").glob("*.tar"))
    before = {p: p.read_bytes() for p in shards}
    assert first["kept"] == 80 and shards
    with pytest.raises(FileExistsError, match=f"output {out} contains input {out / 'shards'}"):
        run("datacomp_basic.yaml", [str(out / "shards")], out, overwrite=True)
    assert {p: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))} == before
    assert (out / "stats.json").exists()  # the first run is untouched too


def test_an_output_inside_its_input_is_refused(tmp_path, small_input):
    out = small_input / "curated"
    with pytest.raises(FileExistsError, match=f"output {out} is inside input {small_input}"):
        run("no_filter.yaml", [str(small_input)], out)
    assert not out.exists() and pq.read_metadata(small_input / "a.parquet").num_rows == 80


def test_overwrite_removes_only_what_curate_wrote(tmp_path, small_input):
    out = tmp_path / "out"
    run("no_filter.yaml", [str(small_input)], out)
    user = {out / "notes.tmp": b"mine", out / "shards" / "draft.tmp": b"draft", out / "shards" / "README": b"x",
            out / "photos" / "cat.jpg.tmp": b"cat", out / "keep.txt": b"keep"}
    for path, data in user.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    leftovers = [out / "shards" / "part-00007.tar.tmp", out / "stats.json.4242-0badcafe.tmp",
                 out / "_work" / "pass0" / "part-00000.parquet.77-12345678.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
    stats = run("datacomp_basic.yaml", [str(small_input)], out, overwrite=True)
    assert stats["pipeline"] == "datacomp_basic" and stats["kept"] + stats["rejected"] == 80
    assert {path: path.read_bytes() for path in user} == user
    assert not any(path.exists() for path in leftovers)
    kept = sum(pq.read_metadata(p).num_rows for p in (out / "parquet").glob("part-*.parquet"))
    assert kept == stats["kept"]


def test_overwrite_refuses_curate_names_that_no_curate_run_wrote(tmp_path, small_input):
    out = tmp_path / "out"
    (out / "parquet").mkdir(parents=True)
    mine = out / "parquet" / "part-00000.parquet"
    shutil.copy(small_input / "a.parquet", mine)
    with pytest.raises(FileExistsError, match="is not a curate run .* but holds parquet/part-00000.parquet"):
        run("no_filter.yaml", [str(small_input)], out, overwrite=True)
    assert pq.read_metadata(mine).num_rows == 80


def test_remove_temp_files_takes_only_curates_own_temporaries(tmp_path):
    own = [tmp_path / "rejected.parquet.12-abcdef01.tmp", tmp_path / "parquet" / "part-00003.parquet.tmp",
           tmp_path / "shards" / "part-00003.tar.tmp", tmp_path / "_work" / "fit0" / "x.parquet.9-00ff00ff.tmp"]
    users = [tmp_path / "data.tmp", tmp_path / "shards" / "upload.tmp", tmp_path / "inbox" / "part-00001.tar.tmp",
             tmp_path / "inbox" / "stats.json.12-abcdef01.tmp"]
    for path in own + users:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert remove_temp_files(tmp_path) == len(own)
    assert not any(p.exists() for p in own) and all(p.exists() for p in users)
