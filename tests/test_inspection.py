"""`curate inspect OUTPUT --reason R`: rejected samples joined back to their images and captions,
for duplicates the sample kept in their place, as HTML or Parquet."""

import pyarrow.parquet as pq
from click.testing import CliRunner

from curate.cli import main


def test_duplicates_come_with_the_sample_kept_in_their_place(report_run, report_input, tmp_path):
    out, _ = report_run
    target = tmp_path / "dups.parquet"
    result = CliRunner().invoke(main, ["inspect", str(out), "--reason", "duplicate", "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"2 samples rejected with duplicate -> {target}"
    table = pq.read_table(target).to_pylist()
    source = {row["uid"]: row for row in pq.read_table(report_input).to_pylist()}
    kept = set(pq.read_table(out / "parquet", columns=["uid"]).column("uid").to_pylist())
    for row in table:
        assert row["reason"] == "duplicate" and row["kept_uid"] == row["value"] and row["kept_status"] == "kept"
        assert row["kept_uid"] in kept
        assert (row["text"], row["image"]) == (source[row["uid"]]["text"], source[row["uid"]]["image"])
        assert row["kept_image"] == source[row["kept_uid"]]["image"] == row["image"]  # the same bytes: exact dedup


def test_html_page_and_n(report_run, tmp_path):
    out, _ = report_run
    target = tmp_path / "few.html"
    result = CliRunner().invoke(main, ["inspect", str(out), "--reason", "too_few_words", "--n", "5", "--out",
                                       str(target)])
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert page.count("<figure class='card'>") == 5 and page.count("data:image/jpeg;base64,") == 5
    assert "too_few_words: " in page


def test_an_unknown_reason_lists_the_run_reasons(report_run):
    out, _ = report_run
    result = CliRunner().invoke(main, ["inspect", str(out), "--reason", "near_dup"])
    assert result.exit_code == 2
    assert "no sample was rejected with reason 'near_dup'; did you mean 'near_duplicate'?" in result.output
    assert "reasons in this run: aspect_ratio, corrupt_image" in result.output


def test_a_near_duplicate_beside_its_kept_image(report_run, tmp_path):
    from curate.inspection import inspect_rejected

    out, _ = report_run
    rows = inspect_rejected(out, "near_duplicate").to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert row["kept_uid"] == row["value"] and row["kept_status"] == "kept"
    assert row["image"] and row["kept_image"] and row["kept_image"] != row["image"]  # near, not the same bytes


def test_repeats_of_a_uid_less_input_are_read_back_by_the_uids_the_run_made(tmp_path, pool_table):
    """Samples of one (url, text) pair in other row groups and files have uids numbered over the
    whole input (issue 18): inspect reads each back by its run's uid, not by a count within its task."""
    from curate.engines import LocalEngine
    from curate.inspection import inspect_rejected
    from tests.engines.test_occurrences import parquet_inputs, run

    folder, pairs = parquet_inputs(tmp_path, pool_table)
    run([folder], tmp_path / "out", LocalEngine(workers=1, progress=False))
    rows = inspect_rejected(tmp_path / "out", "duplicate").to_pylist()
    assert len(rows) == 4  # 3 of a's row 1 pair (rows 1, 2, 5 of a, 2 of b) and 1 of row 9's (9 of a, 7 of b)
    for row in rows:
        assert (row["url"], row["text"]) in (pairs[1], pairs[9]) and row["image"] and row["kept_status"] == "kept"
        assert row["kept_image"] and row["kept_text"] == row["text"]
