"""The stage-2 conversation set built from the real test pool's metadata (LLaVA-Instruct JSON)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.io.readers.contract import InputError
from train.llava.conversations import QUESTIONS, build_conversations, main


def _turn_pairs(record: dict) -> list[tuple[str, str]]:
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
    return [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns), 2)]


def _field_of(question: str) -> str:
    question = question.removeprefix("<image>\n")
    return next(field for field, phrasings in QUESTIONS.items() if question in phrasings)


def test_every_pool_sample_becomes_a_record_answered_from_its_metadata(tmp_path, pool_root, pool_table):
    path = build_conversations(pool_root / "pool", tmp_path / "conv", progress=False)
    records = json.loads(path.read_text())
    rows = {row["uid"]: row for row in pool_table.to_pylist()}
    assert {r["id"] for r in records} == set(rows)  # the pool is clean: nothing rejected
    assert pq.read_table(tmp_path / "conv" / "train_rejected.parquet").num_rows == 0
    fields_seen = set()
    for record in records:
        row = rows[record["id"]]
        assert (path.parent / record["image"]).read_bytes() == row["image"]
        pairs = _turn_pairs(record)
        assert pairs[0][0].startswith("<image>\n") and all("<image>" not in q for q, _ in pairs[1:])
        answers = {_field_of(q): a for q, a in pairs}
        fields_seen |= answers.keys()
        assert answers.get("text", "") == " ".join((row["text"] or "").split())  # asked with stage 1's prompt
        assert answers["category"] == row["category"].replace("_", " ")
        assert answers.get("title", "") == row["title"]
        keywords = list(dict.fromkeys(row["keywords"]))[:10]
        assert answers.get("keywords", "") == ", ".join(keywords)
        described = row["description"] and row["description"] != row["title"]
        assert answers.get("description", "") == (row["description"] if described else "")
        assert all(a.strip() for a in answers.values())  # a turn with an empty answer is left out
    assert fields_seen == set(QUESTIONS)
    summary = json.loads((path.parent / "train_summary.json").read_text())
    assert summary["records"] == len(records) == summary["inputs"]
    assert summary["turns"] == sum(len(r["conversations"]) // 2 for r in records)
    again = build_conversations(pool_root / "pool", tmp_path / "again", progress=False)
    assert again.read_text() == path.read_text()  # question phrasings are a function of the uid


def test_unusable_samples_go_to_the_ledger_with_a_reason(tmp_path, pool_table):
    good = pool_table.slice(0, 3).to_pylist()
    bad = [
        {**good[0], "uid": "no-image", "image": None},
        {**good[0], "uid": "html", "image": b"<html>404</html>"},
        {**good[0], "uid": "cut", "image": good[1]["image"][:200]},
        {**good[0], "uid": "silent", "text": None, "category": " ", "title": "", "description": "", "keywords": []},
    ]
    folder = tmp_path / "input"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(good + bad, schema=pool_table.schema), folder / "a.parquet")
    path = build_conversations(folder, tmp_path / "conv", progress=False)
    assert [r["id"] for r in json.loads(path.read_text())] == [r["uid"] for r in good]
    ledger = pq.read_table(tmp_path / "conv" / "train_rejected.parquet").to_pylist()
    reasons = {r["uid"]: (r["stage"], r["reason"]) for r in ledger}
    assert reasons == {"no-image": ("conversations", "missing_image"), "html": ("conversations", "corrupt_image"),
                       "cut": ("conversations", "corrupt_image"), "silent": ("conversations", "no_answers")}
    summary = json.loads((tmp_path / "conv" / "train_summary.json").read_text())
    assert summary["inputs"] == 7 and summary["rejected"] == {"missing_image": 1, "corrupt_image": 2, "no_answers": 1}


def test_missing_metadata_column_is_named(tmp_path, pool_table):
    folder = tmp_path / "input"
    folder.mkdir()
    pq.write_table(pool_table.drop_columns(["keywords", "title"]), folder / "a.parquet")
    with pytest.raises(InputError, match=r"a\.parquet.*no column\(s\) \['title', 'keywords'\]"):
        build_conversations(folder, tmp_path / "conv", progress=False)
    path = build_conversations(folder, tmp_path / "conv", fields=("category", "description"), progress=False)
    asked = {_field_of(q) for r in json.loads(path.read_text()) for q, _ in _turn_pairs(r)}
    assert asked == {"category", "description"}


def test_cli_writes_the_train_set_and_the_held_out_vqa_set(tmp_path, pool_root, capsys):
    out = tmp_path / "conv"
    assert main(["--pool", str(pool_root / "pool"), "--eval", str(pool_root / "eval"), "--out", str(out),
                 "--quiet"]) == 0
    held_out = json.loads((out / "eval.json").read_text())
    eval_uids = set(pq.read_table(pool_root / "eval", columns=["uid"]).column("uid").to_pylist())
    assert {r["id"] for r in held_out} == eval_uids
    assert not eval_uids & {r["id"] for r in json.loads((out / "train.json").read_text())}
    assert all([_field_of(q) for q, _ in _turn_pairs(r)] == ["category"] for r in held_out)
    assert "eval.json" in capsys.readouterr().out
    assert main(["--pool", str(tmp_path / "nowhere"), "--out", str(out), "--quiet"]) == 2
