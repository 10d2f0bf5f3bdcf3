"""The run report: rendered in headless Chromium (Debian's chromium, driven by playwright), with no
console errors, every section present, a gallery per rejection reason with its images loaded;
fit rows folded into their stage, percentages in the funnel, pool and kept side by side."""

import json
import shutil
from pathlib import Path

import pytest

from curate.io.card import fold_fits
from curate.report import GALLERY_PER_REASON
from curate.samples import reason_counts

CHROMIUM = Path("/usr/bin/chromium")
UNSHOWABLE = {"missing_image", "empty_image", "corrupt_image", "truncated_image", "decompression_bomb"}


@pytest.fixture(scope="module")
def page_dom(report_run):
    """The report as Chromium renders it: console messages and page errors, and what its DOM holds."""
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} missing: run `make test` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    out, _ = report_run
    messages = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.goto((out / "report.html").as_uri(), wait_until="load")
            dom = page.evaluate("""() => ({
                sections: [...document.querySelectorAll('body > section[id]')].map(s => s.id),
                galleries: [...document.querySelectorAll('#rejected section.gallery')].map(s => ({
                    stage: s.dataset.stage, reason: s.dataset.reason,
                    cards: s.querySelectorAll('figure.card').length,
                    images: [...s.querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0),
                    placeholders: s.querySelectorAll('.noimage').length,
                    values: [...s.querySelectorAll('figcaption code')].map(c => c.textContent)})),
                kept: [...document.querySelectorAll('#kept img')].map(i => i.complete && i.naturalWidth > 0),
                plots: [...document.querySelectorAll('#distributions figure.plot')].map(f => [f.dataset.plot,
                    f.querySelector('img').naturalWidth > 0]),
                stages: [...document.querySelectorAll('#stages tr td:first-child')].map(td => td.textContent),
                funnel: [...document.querySelectorAll('#funnel tr')].map(tr => tr.textContent),
                provenance: document.querySelector('#provenance') ? document.querySelector('#provenance').innerText : ''
            })""")
        finally:
            browser.close()
    return messages, dom


def test_report_renders_without_console_errors(page_dom):
    messages, dom = page_dom
    assert messages == []
    assert dom["sections"] == ["provenance", "stages", "funnel", "reasons", "distributions", "rejected", "kept"]


def test_a_gallery_per_rejection_reason_with_its_images(page_dom, report_run):
    _, dom = page_dom
    _, stats = report_run
    counts = reason_counts(stats)
    assert {(g["stage"], g["reason"]) for g in dom["galleries"]} == set(counts)
    for gallery in dom["galleries"]:
        shown = min(GALLERY_PER_REASON, counts[(gallery["stage"], gallery["reason"])])
        assert gallery["cards"] == shown, gallery
        if gallery["reason"] in UNSHOWABLE:  # read and decode faults: the card says why there is no image
            assert gallery["placeholders"] == shown and gallery["images"] == []
        else:
            assert gallery["images"] == [True] * shown, gallery
        assert all(value.startswith(f"{gallery['reason']}") for value in gallery["values"])
    too_few = next(g for g in dom["galleries"] if g["reason"] == "too_few_words")
    assert all(v.split(": ")[1] in ("0", "1") for v in too_few["values"])  # the offending word count
    assert dom["kept"] == [True] * GALLERY_PER_REASON


def test_pool_and_kept_distributions_side_by_side(page_dom):
    _, dom = page_dom
    assert dom["plots"] == [["caption", True], ["side", True], ["aspect", True], ["clip_score", True], ["lang", True]]


def test_fit_rows_are_folded_and_the_funnel_has_percentages(page_dom, report_run):
    _, dom = page_dom
    _, stats = report_run
    assert not any(key.endswith(":fit") for key in dom["stages"])
    assert "4:exact_dedup" in dom["stages"]
    after_caption = next(row for row in dom["funnel"] if row.startswith("after 1:caption"))
    caption = next(s for s in stats["stages"] if s["key"] == "1:caption")
    assert f"{100 * caption['out'] / stats['input']:.1f}% of input" in after_caption
    assert f"-{100 * caption['rejected'] / caption['in']:.1f}% here" in after_caption


def test_the_header_says_how_the_output_was_made(page_dom, report_run):
    _, dom = page_dom
    out, _ = report_run
    run = json.loads((out / "run.json").read_text())
    for text in (run["curate_version"], run["started"], run["finished"], "local, 1 worker(s)", "min_side: 64",
                 "2 file(s)"):
        assert text in dom["provenance"], text


def test_fold_fits_merges_a_global_stage_with_its_fit_row():
    stages = [{"key": "0:decode", "name": "decode", "in": 10, "out": 9, "rejected": 1, "reasons": {"corrupt_image": 1}},
              {"key": "1:near_dedup:fit", "name": "near_dedup", "in": 9, "out": 8, "rejected": 1,
               "reasons": {"phash_failed": 1}},
              {"key": "1:near_dedup", "name": "near_dedup", "in": 8, "out": 5, "rejected": 3,
               "reasons": {"near_duplicate": 3}}]
    assert fold_fits(stages) == [stages[0], {"key": "1:near_dedup", "name": "near_dedup", "in": 9, "out": 5,
                                             "rejected": 4, "reasons": {"near_duplicate": 3, "phash_failed": 1}}]


def test_the_kept_sample_reads_whole_parts_up_to_its_limit(tmp_path):
    """The distributions' sample is bounded whatever the output's size: whole parts in a seeded
    order, the last one cut, not every k-th row of every part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.report_plots import sample_rows

    parts = []
    for i in range(6):
        parts.append(tmp_path / f"part-{i:05d}.parquet")
        pq.write_table(pa.table({"uid": [f"{i}-{j}" for j in range(100)], "text": ["t"] * 100}), parts[-1],
                       row_group_size=30)
    sample = sample_rows(parts, ["uid", "clip_score"], limit=150)
    assert sample.num_rows == 150 and sample.column_names == ["uid"]
    counts = {}
    for uid in sample.column("uid").to_pylist():
        counts[uid.split("-")[0]] = counts.get(uid.split("-")[0], 0) + 1
    assert sorted(counts.values()) == [50, 100]
    assert sample_rows(parts, ["uid"], limit=150).equals(sample)  # seeded: the same parts every time
