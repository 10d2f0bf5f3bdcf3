"""Evaluation suites: validation errors, a random clip-tiny over a real pool eval split and digits, the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from curate.cli.eval import DEFAULT_SUITE, eval_command
from curate.models.clip import create_clip, save_checkpoint
from curate.sample.openclipart import DEFAULT_SOURCE, build_pool
from train.eval.datasets import DIGIT_NAMES, ensure_digits
from train.eval.evaluate import evaluate, same_content
from train.eval.metrics import retrieval_recalls
from train.eval.suite import SuiteError, SuiteSpec, load_suite, load_task_data

DIGITS_CAP = 200
BLANK_CAPTIONS = ["", "   ", None]


@pytest.fixture(scope="module")
def eval_split(tmp_path_factory) -> Path:
    """The held-out eval split (about 30 real drawings) of a small pool, with blank captions on 3 rows."""
    if not DEFAULT_SOURCE.is_dir():
        pytest.fail(f"{DEFAULT_SOURCE} missing: run `make test` (it installs openclipart-svg)")
    out = tmp_path_factory.mktemp("openclipart")
    build_pool(out, limit=60, eval_percent=50, progress=False)
    table = pa.concat_tables(pq.read_table(p) for p in sorted((out / "eval").glob("*.parquet")))
    texts = table.column("text").to_pylist()
    texts[: len(BLANK_CAPTIONS)] = BLANK_CAPTIONS
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    folder = out / "eval_blank"
    folder.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-00000.parquet")
    pq.write_table(table.slice(half), folder / "part-00001.parquet")
    return folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return ensure_digits(tmp_path_factory.mktemp("digits") / "digits.parquet")


@pytest.fixture(scope="module")
def clip():
    return create_clip("clip-tiny")


def write_suite(folder: Path, raw: dict, name: str = "suite.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def full_suite(eval_split: Path, digits: Path) -> dict:
    return {"tasks": [
        {"name": "category", "kind": "zeroshot", "data": str(eval_split), "label_column": "category"},
        {"name": "captions", "kind": "retrieval", "data": str(eval_split), "caption_column": "text"},
        {"name": "digits", "kind": "zeroshot", "data": str(digits), "label_column": "label",
         "templates": ['a photo of the number: "{c}".'], "max_samples": DIGITS_CAP},
    ]}


def test_digits_are_real_and_idempotent(digits):
    table = pq.read_table(digits)
    assert table.num_rows == 1797 and table.column_names == ["image", "label"]
    assert set(table.column("label").to_pylist()) == set(DIGIT_NAMES)
    with Image.open(io.BytesIO(table.column("image")[0].as_py())) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    written = digits.stat().st_mtime_ns
    assert ensure_digits(digits) == digits and digits.stat().st_mtime_ns == written


def test_shipped_default_suite_is_valid():
    spec = SuiteSpec.model_validate(yaml.safe_load(DEFAULT_SUITE.read_text()))
    assert [t.name for t in spec.tasks] == ["openclipart_category", "openclipart_captions", "digits"]
    assert spec.tasks[0].prompts("signs_and_symbols")[0] == "a drawing of signs and symbols."


@pytest.mark.parametrize("change, key, expected", [
    (lambda t: t[1].update(kind="classify"), "tasks[1].kind", "'zeroshot', 'retrieval', 'captioning' or 'vqa'"),
    (lambda t: t[0].update(bogus=1), "tasks[0].bogus", "Extra inputs are not permitted"),
    (lambda t: t[0].update(label_column="species"), "tasks[0].label_column", "column 'species' not in"),
    (lambda t: t[1].update(caption_column="alt"), "tasks[1].caption_column", "column 'alt' not in"),
    (lambda t: t[0].pop("label_column"), "tasks[0].label_column", "required for zeroshot tasks"),
    (lambda t: t[1].update(templates=["a {c}"]), "tasks[1].templates", "only used by zeroshot tasks"),
    (lambda t: t[2].update(templates=["a number"]), "tasks[2].templates[0]", "should match pattern"),
    (lambda t: t[2].update(data="nowhere.parquet"), "tasks[2].data", "'nowhere.parquet' not found"),
    (lambda t: t[2].update(name="category"), "tasks[2].name", "duplicate task name"),
    (lambda t: t[2].update(classnames=["zero", "one"]), "tasks[2].classnames", "are not in classnames"),
    (lambda t: t[2].update(max_samples=0), "tasks[2].max_samples", "greater than 0"),
])
def test_validation_errors_name_file_and_key(tmp_path, eval_split, digits, change, key, expected):
    raw = full_suite(eval_split, digits)
    change(raw["tasks"])
    path = write_suite(tmp_path, raw)
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    assert f"{path}: {key}" in str(error.value) and expected in str(error.value)


def test_missing_column_names_the_parquet_file(tmp_path, eval_split, digits):
    raw = full_suite(eval_split, digits)
    raw["tasks"][2]["label_column"] = "digit"
    with pytest.raises(SuiteError, match=f"tasks\\[2\\].label_column: column 'digit' not in {digits}"):
        load_suite(write_suite(tmp_path, raw))


def test_relative_data_resolves_against_suite_folder_then_cwd(tmp_path, digits, monkeypatch):
    task = {"name": "digits", "kind": "zeroshot", "data": digits.name, "label_column": "label"}
    beside = load_suite(write_suite(digits.parent, {"tasks": [task]}, name="beside.yaml"))
    assert beside.tasks[0].data == str(digits.resolve())
    monkeypatch.chdir(digits.parent)
    from_cwd = load_suite(write_suite(tmp_path, {"tasks": [task]}))
    assert from_cwd.tasks[0].data == str(digits.resolve())


def test_builtin_digits_are_written_on_first_use(tmp_path, clip):
    target = tmp_path / "eval" / "digits.parquet"
    path = write_suite(tmp_path, {"max_samples": 50, "tasks": [
        {"name": "digits", "kind": "zeroshot", "data": str(target), "builtin": "digits", "label_column": "label"}]})
    suite = load_suite(path)  # validated against the builtin's columns; nothing written yet
    assert not target.exists()
    results = evaluate(clip, suite, progress=False)
    assert target.is_file() and results["tasks"]["digits"]["n"] == 50 and results["tasks"]["digits"]["classes"] == 10


def test_same_content_marks_repeated_captions_and_images():
    mask = same_content(["A cat", "a  cat", "a dog", "a fox"], [b"1", b"2", b"3", b"3"])
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False],
                             [False, False, True, True], [False, False, True, True]]


def test_a_perfect_model_can_reach_full_recall_on_the_real_split(tmp_path, eval_split, digits):
    """The real split repeats captions (and images); counting those as matches leaves 1.0 reachable."""
    suite = load_suite(write_suite(tmp_path, full_suite(eval_split, digits)))
    data = load_task_data(suite.tasks[1])
    positives = same_content(data.captions, data.images)
    assert positives.sum() > len(data.captions)  # the split does hold repeats
    oracle = positives.astype(float)  # scores 1 exactly for content-identical rows
    assert all(v == 1.0 for v in retrieval_recalls(oracle, positives=positives).values())
    assert retrieval_recalls(oracle, ks=(1,))["image_to_text_R@1"] < 1.0  # diagonal-only would punish repeats
    assert np.array_equal(positives, positives.T) and positives.diagonal().all()


def test_evaluate_random_clip_tiny(tmp_path, eval_split, digits, clip):
    table = pa.concat_tables(pq.read_table(p) for p in sorted(eval_split.glob("*.parquet")))
    categories = table.column("category").to_pylist()
    blank = sum(1 for text in table.column("text").to_pylist() if not (text or "").strip())
    assert blank == len(BLANK_CAPTIONS)

    clip.model.train()
    results = evaluate(clip, load_suite(write_suite(tmp_path, full_suite(eval_split, digits))), batch_size=16,
                       progress=False)
    assert clip.model.training  # the caller's mode is restored

    tasks = results["tasks"]
    assert list(tasks) == ["category", "captions", "digits"]
    assert (tasks["category"]["n"], tasks["category"]["skipped"]) == (len(categories), 0)
    assert tasks["category"]["classes"] == len(set(categories))
    assert (tasks["captions"]["n"], tasks["captions"]["skipped"]) == (table.num_rows - blank, blank)
    assert (tasks["digits"]["n"], tasks["digits"]["skipped"], tasks["digits"]["classes"]) == (DIGITS_CAP, 0, 10)
    for task in tasks.values():
        assert all(0.0 <= value <= 1.0 for value in task["metrics"].values())
    assert tasks["category"]["main"] == tasks["category"]["metrics"]["top1"]
    captions = tasks["captions"]["metrics"]
    mean_r1 = (captions["image_to_text_R@1"] + captions["text_to_image_R@1"]) / 2
    assert tasks["captions"]["main"] == pytest.approx(mean_r1)
    assert set(captions) == {f"{way}_R@{k}" for way in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert results["aggregate"] == pytest.approx(sum(t["main"] for t in tasks.values()) / 3)


def test_cli_writes_results_next_to_checkpoint(tmp_path, eval_split, digits, clip):
    checkpoint = tmp_path / "run" / "last.pt"
    save_checkpoint(checkpoint, clip, step=7)
    suite = write_suite(tmp_path, full_suite(eval_split, digits))
    result = CliRunner().invoke(eval_command, ["--checkpoint", str(checkpoint), "--suite", str(suite),
                                               "--batch-size", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    results = json.loads((checkpoint.parent / "results.json").read_text())
    assert results["checkpoint_state"]["step"] == 7 and set(results["tasks"]) == {"category", "captions", "digits"}
    assert 0.0 <= results["aggregate"] <= 1.0
    for name in ("category", "captions", "digits", "aggregate"):
        assert name in result.output


@pytest.mark.parametrize("problem", ["missing checkpoint", "bad suite", "not a checkpoint"])
def test_cli_errors_exit_2_with_a_clear_message(tmp_path, eval_split, digits, clip, problem):
    checkpoint = tmp_path / "last.pt"
    save_checkpoint(checkpoint, clip)
    raw = full_suite(eval_split, digits)
    if problem == "missing checkpoint":
        checkpoint, expected = tmp_path / "nope.pt", "nope.pt not found"
    elif problem == "bad suite":
        raw["tasks"][0]["kind"] = "classify"
        expected = "tasks[0].kind"
    else:
        checkpoint.write_text("not a checkpoint")
        expected = f"cannot load checkpoint {checkpoint}"
    result = CliRunner().invoke(eval_command, ["--checkpoint", str(checkpoint), "--suite",
                                               str(write_suite(tmp_path, raw))])
    assert result.exit_code == 2 and expected in result.output, result.output
