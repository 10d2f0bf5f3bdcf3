"""The dataset card: a run's OUTPUT/README.md makes `datasets.load_dataset(OUTPUT)` give exactly the
kept samples (config `default`) and the rejection ledger (config `rejected`), with the features of
the Parquet schemas, and tells the counts of stats.json. The real `datasets` library on real runs
of the real pool."""

import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curate.engines.local import LocalEngine
from curate.io.card import KEPT_FILES, features
from curate.pipeline import load_pipeline
from curate.runner import run_pipeline

RECIPE = """
name: carded
batch_size: 16
stages:
  - stage: decode
  - stage: caption
    min_words: 2
  - stage: exact_dedup
"""


def front_matter(card: Path) -> dict:
    text = card.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def card_reasons(card: Path) -> dict[tuple[str, str], int]:
    """The card's Counts table as {(stage key, reason): rejected} (a stage's further reasons on rows of their own)."""
    rows, stage = {}, None
    for line in card.read_text().split("## Counts")[1].split("\n## ")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("stage", "---") or cells[0].startswith("---"):
            continue
        stage = cells[0].strip("`") or stage
        if cells[3]:
            rows[stage, cells[3]] = int(cells[4])
    return rows


def test_load_dataset_on_a_run_output_gives_the_kept_samples_and_the_ledger(faulty_input, tmp_path):
    recipe = tmp_path / "carded.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    stats = run_pipeline(load_pipeline(recipe), LocalEngine(2, progress=False), [str(faulty_input)], out)
    kept = pa.concat_tables(pq.read_table(p) for p in sorted((out / "parquet").glob("*.parquet")))
    ledger = pq.read_table(out / "rejected.parquet")
    assert stats["rejected"] > 0 and stats["kept"] > 0 and (out / "_work").is_dir() and (out / "shards").is_dir()

    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train.column_names == kept.column_names
    assert train.features == datasets.Features.from_arrow_schema(kept.schema)
    by_uid = lambda row: row["uid"]  # noqa: E731
    assert sorted(train.to_list(), key=by_uid) == sorted(kept.to_pylist(), key=by_uid)

    rejected = datasets.load_dataset(str(out), "rejected", cache_dir=str(tmp_path / "hf"))["train"]
    assert rejected.column_names == ["uid", "stage", "reason", "value"]
    by_key = lambda row: (row["uid"], row["stage"], row["reason"])  # noqa: E731
    assert sorted(rejected.to_list(), key=by_key) == sorted(ledger.to_pylist(), key=by_key)
    assert rejected.num_rows == stats["rejected"]

    card = out / "README.md"
    meta = front_matter(card)
    assert [c["config_name"] for c in meta["configs"]] == ["default", "rejected"]
    sizes = {info["config_name"]: info["splits"][0]["num_examples"] for info in meta["dataset_info"]}
    assert sizes == {"default": stats["kept"], "rejected": stats["rejected"]}
    on_disk = json.loads((out / "stats.json").read_text())
    expected = {}
    for stage in on_disk["stages"]:
        for reason, count in stage["reasons"].items():
            key = (stage["key"].removesuffix(":fit"), reason)
            expected[key] = expected.get(key, 0) + count
    assert card_reasons(card) == expected and sum(expected.values()) == on_disk["rejected"]
    summary = re.search(r"([\d,]+) input samples, ([\d,]+) kept, ([\d,]+) rejected", card.read_text())
    assert [int(n.replace(",", "")) for n in summary.groups()] == [on_disk[k] for k in ("input", "kept", "rejected")]
    assert "stages:" in card.read_text() and "min_words: 2" in card.read_text()  # the pipeline, as run
    assert f"load_dataset({str(out)!r})" in card.read_text()  # how to load it, from where it is
    assert "README.md" in json.loads((out / "_SUCCESS").read_text())["files"]  # curate's output: in the manifest


@pytest.mark.parametrize("kind", [
    pa.float32(), pa.float64(), pa.bool_(), pa.large_string(), pa.binary(), pa.date32(),
    pa.timestamp("us", tz="UTC"), pa.list_(pa.float32()), pa.list_(pa.float32(), 4), pa.large_list(pa.int64()),
    pa.struct([("a", pa.int16()), ("b", pa.list_(pa.string()))]), pa.list_(pa.struct([("x", pa.float64())])),
    pa.list_(pa.list_(pa.int32())),
])
def test_card_features_are_what_datasets_reads_from_the_parquet_schema(kind, tmp_path):
    table = pa.table({"uid": ["a", "b"], "column": pa.nulls(2, kind)})
    (tmp_path / "parquet").mkdir()
    pq.write_table(table, tmp_path / "parquet" / "part-00000.parquet")
    meta = {"configs": [{"config_name": "default", "data_files": KEPT_FILES}],
            "dataset_info": {"features": features(table.schema)}}
    (tmp_path / "README.md").write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n")
    loaded = datasets.load_dataset(str(tmp_path), cache_dir=str(tmp_path / "hf"))["train"]
    assert loaded.features == datasets.Features.from_arrow_schema(table.schema)
    assert loaded.data.table.schema.field("column").type == table.schema.field("column").type
