"""The download stage and `curate download` against a real HTTP server on 127.0.0.1 with faults."""

import csv
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from curate.schema import make_uid
from curate.stages.download import Download, DownloadConfig
from tests.http_faults import TIMEOUT, FaultyHandler

# path -> (stage that must decide, reason); None = kept
EXPECTED = {
    "/img/0.jpg": None, "/img/1.jpg": None, "/img/2.jpg": None, "/flaky.jpg": None,
    "/missing.jpg": ("download", "http_error"), "/error.jpg": ("download", "http_error"),
    "/slow.jpg": ("download", "timeout"), "/truncated.jpg": ("download", "truncated_download"),
    "/loop.jpg": ("download", "redirect_loop"), "/huge.jpg": ("download", "too_large"),
    "/robots.jpg": ("download", "robots_disallowed"), "/page.jpg": ("decode", "corrupt_image"),
    "http://127.0.0.1:9/refused.jpg": ("download", "download_error"),
}


def url_list(tmp_path, server) -> tuple:
    """A CSV of every URL in EXPECTED (captions made of words and digits) and one row without a URL."""
    urls = {(t if t.startswith("http") else server + t): (f"caption {i} 42", e) for i, (t, e) in enumerate(EXPECTED.items())}
    path = tmp_path / "urls.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        writer.writerows([url, caption] for url, (caption, _) in urls.items())
        writer.writerow(["", "a caption without a url"])
    return path, urls


def test_every_url_is_kept_or_in_the_ledger_with_its_error(tmp_path, image_server):
    csv_path, urls = url_list(tmp_path, image_server)
    FaultyHandler.attempts.clear()  # the server is shared by the session; count this test's requests only
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "curate.cli", "download", str(csv_path), "--output", str(out),
         "--timeout", str(TIMEOUT), "--retries", "1", "--max-bytes", "2000000", "--workers", "1", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    kept = {row["url"]: row for row in pq.read_table(out / "parquet").to_pylist()}
    ledger = {row["uid"]: row for row in pq.read_table(out / "rejected.parquet").to_pylist()}
    assert len(kept) + len(ledger) == len(urls) + 1
    for url, (caption, expected) in urls.items():
        if expected is None:
            assert kept[url]["text"] == caption and kept[url]["width"] > 0
        else:
            row = ledger[make_uid(url, caption)]
            assert (row["stage"], row["reason"]) == expected, row
    assert ledger[make_uid(image_server + "/missing.jpg", urls[image_server + "/missing.jpg"][0])]["value"] == "404 Not Found"
    assert ledger[make_uid(image_server + "/error.jpg", urls[image_server + "/error.jpg"][0])]["value"].startswith("500")
    assert [row["reason"] for row in ledger.values()].count("missing_url") == 1
    assert FaultyHandler.attempts["/flaky.jpg"] == 2 and FaultyHandler.attempts["/missing.jpg"] == 2  # retried


def test_rows_with_images_are_not_downloaded_again(pool_table, image_server):
    FaultyHandler.attempts.pop("/img/3.jpg", None)
    image = pool_table.column("image")[4].as_py()
    table = pa.table({"uid": ["a" * 32, "b" * 32], "url": [image_server + "/img/3.jpg", image_server + "/img/3.jpg"],
                      "image": pa.array([image, None], pa.binary())})
    verdict = Download(DownloadConfig(timeout=TIMEOUT)).process(table)
    assert verdict.reasons == [None, None]
    assert verdict.table.column("image").to_pylist() == [image, FaultyHandler.images[3]]
    assert FaultyHandler.attempts["/img/3.jpg"] == 1
