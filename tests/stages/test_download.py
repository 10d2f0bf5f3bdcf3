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
    urls = {(t if t.startswith("http") else server + t): (f"caption {i} 42", e)
            for i, (t, e) in enumerate(EXPECTED.items())}
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
    def value(path: str) -> str:
        return ledger[make_uid(image_server + path, urls[image_server + path][0])]["value"]

    assert value("/missing.jpg") == "404 Not Found"
    assert value("/error.jpg").startswith("500")
    assert [row["reason"] for row in ledger.values()].count("missing_url") == 1
    assert FaultyHandler.attempts["/flaky.jpg"] == 2 and FaultyHandler.attempts["/missing.jpg"] == 2  # retried


def test_rows_with_images_are_not_downloaded_again(pool_table, image_server):
    FaultyHandler.attempts.pop("/img/3.jpg", None)
    image = pool_table.column("image")[4].as_py()
    table = pa.table({"uid": ["a" * 32, "b" * 32], "url": [image_server + "/img/3.jpg", image_server + "/img/3.jpg"],
                      "image": pa.array([image, None], pa.binary())})
    verdict = Download(DownloadConfig(timeout=TIMEOUT)).process(table)
    assert verdict.reasons.tolist() == [None, None]
    assert verdict.table.column("image").to_pylist() == [image, FaultyHandler.images[3]]
    assert FaultyHandler.attempts["/img/3.jpg"] == 1


# Run the stage in a fresh process on `urls`; print what it decided, how long it took and how much
# its peak resident set grew (KiB) while downloading.
BOUNDED = """
import json, resource, sys, time
import pyarrow as pa
from curate.stages.download import Download, DownloadConfig
urls, timeout, max_bytes = json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
table = pa.table({"uid": [f"{i:032x}" for i in range(len(urls))], "url": urls,
                  "image": pa.nulls(len(urls), pa.binary())})
before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
verdict = Download(DownloadConfig(timeout=timeout, max_bytes=max_bytes)).process(table)
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"reasons": verdict.reasons.tolist(), "values": verdict.values.tolist(),
                  "elapsed": time.monotonic() - started, "growth_kib": growth}))
"""


def download_in_process(urls: list[str], timeout: float, max_bytes: int, limit: float) -> dict:
    """The stage's verdict on `urls` in a subprocess that must finish within `limit` seconds."""
    import json

    result = subprocess.run([sys.executable, "-c", BOUNDED, json.dumps(urls), str(timeout), str(max_bytes)],
                            capture_output=True, text=True, timeout=limit)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_drip_fed_response_is_cut_at_the_timeout(image_server):
    """One byte every 0.3 s keeps every socket read under the timeout; the whole request is still cut."""
    urls = [image_server + "/drip.jpg", image_server + "/drip-headers.jpg"]
    out = download_in_process(urls, TIMEOUT, 2_000_000, limit=60)
    assert out["reasons"] == ["timeout", "timeout"], out
    assert out["elapsed"] < 3 * TIMEOUT, out


def test_a_body_over_max_bytes_stops_at_the_cap(image_server):
    """A 300 MB body, with and without a Content-Length: refused at the header or once 1 MB is read."""
    from tests.http_faults import STREAM_BYTES

    urls = [image_server + "/stream.jpg", image_server + "/stream-declared.jpg"]
    out = download_in_process(urls, 10.0, 1_000_000, limit=60)
    assert out["reasons"] == ["too_large", "too_large"], out
    assert out["values"][0].startswith("more than 1000000 B (stopped reading at ")
    assert out["values"][1] == f"Content-Length {STREAM_BYTES} B > 1000000 B"
    assert out["elapsed"] < 3 * 10.0 and out["growth_kib"] < 50 * 1024, out


def test_only_http_urls_are_fetched_and_no_body_reaches_the_ledger(image_server):
    urls = ["file:///etc/passwd", image_server + "/to-file.jpg", "ftp://127.0.0.1:9/x.jpg",
            "data:image/png;base64,iVBORw0KGgo=", image_server + "/error.jpg"]
    out = download_in_process(urls, TIMEOUT, 2_000_000, limit=60)
    assert out["reasons"] == ["unsupported_scheme"] * 4 + ["http_error"], out
    assert out["values"][1] == "redirect to file:///etc/passwd: file scheme: only http and https are downloaded"
    assert not any("root:" in v or "boom" in v for v in out["values"]), out  # neither /etc/passwd nor a body
