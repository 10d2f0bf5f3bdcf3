"""A real S3 API on 127.0.0.1: moto's standalone server, as a subprocess, for the object-storage tests."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

_buckets = itertools.count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


S3_ENDPOINT = f"http://127.0.0.1:{_free_port()}"
# The settings curate reads, pointed at the server: set while the tests are collected, before any test
# starts a worker pool, since workers of a forkserver started by an earlier test would have the
# environment of that moment. Dummy credentials, and no instance metadata service to ask.
os.environ.update({"AWS_ENDPOINT_URL": S3_ENDPOINT, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
for _key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_key, None)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server (`python -m moto.server`, its server mode) on S3_ENDPOINT, a free port of 127.0.0.1."""
    port = S3_ENDPOINT.rpartition(":")[2]
    # its log (a line per request) goes to a file: a pipe nobody reads fills at 64 KiB and blocks every request
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
                                  stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{S3_ENDPOINT}/moto-api/", timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                server.wait()
                pytest.fail(f"moto server did not start on {S3_ENDPOINT}: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield S3_ENDPOINT
    server.terminate()
    server.wait(timeout=10)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # its clients point at the server that just stopped


@pytest.fixture()
def bucket(s3_endpoint) -> str:
    """A new empty bucket on the moto server, as an s3:// URL."""
    import s3fs

    name = f"curate-test-{next(_buckets)}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"
