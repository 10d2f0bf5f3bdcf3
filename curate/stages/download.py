"""Download stage: fetch each row's `url` over HTTP(S), in threads; rows that already hold image
bytes are left as they are.

Every attempt is bounded: `timeout` covers the whole request (connecting, redirects, headers and
body; a deadline timer cuts the sockets off, so a server that drip-feeds bytes is stopped too),
and the body is read in chunks that stop at `max_bytes` (a Content-Length over the cap is refused
before reading). Only http and https are fetched, redirects included (no file://, ftp:// or
data:). The ledger holds the status line or error, never a response body. Robots directives
(X-Robots-Tag) and the User-Agent follow img2dataset's downloader.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from multiprocessing.pool import ThreadPool
from urllib.parse import urljoin, urlsplit

import pyarrow as pa
from pydantic import Field

from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict

# img2dataset's default: respect X-Robots-Tag directives that forbid AI use or indexing
DEFAULT_DISALLOWED = ["noai", "noimageai", "noindex", "noimageindex"]
SCHEMES = ("http", "https")
USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"  # img2dataset's
CHUNK = 1 << 16  # bytes asked of the socket at a time
FINAL = ("unsupported_scheme", "too_large", "robots_disallowed")  # the same answer again: not retried


class DownloadConfig(StageConfig):
    """Parameters of the download stage (names and defaults as img2dataset's)."""

    timeout: float = Field(10.0, gt=0, description="seconds one attempt may take, whole: connection, redirects, "
                                                   "headers and body")
    retries: int = Field(0, ge=0, description="further attempts after a failed download")
    threads: int = Field(32, gt=0, description="concurrent downloads per worker")
    max_bytes: int | None = Field(20_000_000, gt=0, description="a larger body is rejected as too_large; reading "
                                                                "stops at the cap")
    user_agent_token: str | None = Field(None, description="identifies the crawler in the User-Agent header")
    disallowed_header_directives: list[str] = Field(DEFAULT_DISALLOWED, description="X-Robots-Tag directives to obey")


class Deadline:
    """When a request must be over: at that moment every socket it opened is shut down, which ends
    any read or write blocked on it (a timer thread; `cancel` when the request is done)."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """Seconds until the deadline (at least a millisecond: a socket timeout of 0 means non-blocking)."""
        return max(self.at - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        """Cut `sock` off at the deadline (at once when it has passed)."""
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed already
        pass


def _watched(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    """`base` whose sockets a Deadline watches from the moment they connect (before a TLS handshake)."""

    class Watched(base):
        def __init__(self, *args, deadline: Deadline, **kwargs):
            super().__init__(*args, **kwargs)
            self._deadline = deadline
            self._create_connection = self._connect

        def _connect(self, address, timeout, source_address=None):
            sock = socket.create_connection(address, min(timeout, self._deadline.left()), source_address)
            self._deadline.watch(sock)
            return sock

    return Watched


_HTTP, _HTTPS = _watched(http.client.HTTPConnection), _watched(http.client.HTTPSConnection)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(_HTTP, req, deadline=self.deadline)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline):
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(_HTTPS, req, context=self._context, deadline=self.deadline)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if (scheme := urlsplit(target).scheme.lower()) not in SCHEMES:
            raise UnsupportedScheme(scheme, target)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class UnsupportedScheme(Exception):
    """A URL (or a redirect's target) that is not http or https."""

    def __init__(self, scheme: str, url: str):
        super().__init__(f"{scheme or 'no'} scheme: only {' and '.join(SCHEMES)} are downloaded")
        self.url = url


def _opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """An opener for http and https alone (build_opener would add file, ftp and data handlers)."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _HTTPHandler(deadline), _HTTPSHandler(deadline),
                    _RedirectHandler(), urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def fetch(url: str, timeout: float, max_bytes: int | None, user_agent_token: str | None = None,
          disallowed: set[str] | None = None) -> tuple[bytes | None, tuple[str, str] | None]:
    """One attempt at `url`: (body, None), or (None, (reason, ledger value)). The attempt ends by
    `timeout` seconds whatever the server does, and reads at most `max_bytes` (+ one chunk) of body."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        return None, ("unsupported_scheme", str(UnsupportedScheme(scheme, url)))
    agent = USER_AGENT + (f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
                          if user_agent_token else "")
    deadline = Deadline(timeout)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": agent})
        with _opener(deadline).open(request, timeout=timeout) as response:
            if disallowed and _is_disallowed(response.headers, user_agent_token, disallowed):
                return None, ("robots_disallowed", "Use of image disallowed by X-Robots-Tag directive")
            return _read_body(response, max_bytes, deadline)
    except UnsupportedScheme as exc:
        return None, ("unsupported_scheme", f"redirect to {exc.url[:100]}: {exc}")
    except urllib.error.HTTPError as exc:  # the status line only: its body stays unread
        exc.close()
        if "infinite loop" in str(exc.msg):
            return None, ("redirect_loop", f"{exc.code} redirect loop")
        return None, ("http_error", f"{exc.code} {exc.reason}"[:200])
    except Exception as exc:  # noqa: BLE001 - any failure of one URL is that row's rejection
        if deadline.expired or isinstance(exc, TimeoutError) or "timed out" in str(exc):
            return None, ("timeout", f"not done in {timeout:g} s")
        if isinstance(exc, http.client.HTTPException):  # its message would quote what the server sent
            return None, ("download_error", type(exc).__name__)
        return None, ("download_error", f"{type(exc).__name__}: {exc}"[:200])
    finally:
        deadline.cancel()


def _read_body(response, max_bytes: int | None, deadline: Deadline) -> tuple[bytes | None, tuple[str, str] | None]:
    """The body, read a chunk at a time (read1: what one recv gives, so a slow sender is seen)."""
    declared = response.headers.get("Content-Length")
    if max_bytes is not None and declared and declared.isdigit() and int(declared) > max_bytes:
        return None, ("too_large", f"Content-Length {declared} B > {max_bytes} B")
    chunks, size = [], 0
    while chunk := response.read1(CHUNK):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            return None, ("too_large", f"more than {max_bytes} B (stopped reading at {size} B)")
        chunks.append(chunk)
    if response.length != 0 and deadline.expired:  # cut off, unless every declared byte had come
        return None, ("timeout", f"{size} B read when the deadline passed")
    if response.length:  # read1 returns b"" at an early EOF: bytes of the declared length are missing
        return None, ("truncated_download", f"IncompleteRead: {size} B of {size + response.length} B")
    return b"".join(chunks), None


def _is_disallowed(headers, user_agent_token: str | None, disallowed: set[str]) -> bool:
    """Whether an X-Robots-Tag header (for every agent, or for ours) names a disallowed directive."""
    for value in headers.get_all("X-Robots-Tag") or []:
        token, colon, directives = value.partition(":")
        token, directives = (token.strip().lower(), directives) if colon else (None, value)
        if token in (None, user_agent_token) and {d.strip().lower() for d in directives.split(",")} & disallowed:
            return True
    return False


class Download(MapStage):
    """Download images from `url` over http(s), each attempt bounded in time and size; the HTTP
    status or error goes to the ledger."""

    name = "download"
    Config = DownloadConfig
    reads = ("url",)
    writes = {"image": pa.binary()}
    reasons = ("missing_url", "unsupported_scheme", "http_error", "timeout", "truncated_download", "redirect_loop",
               "robots_disallowed", "too_large", "download_error")

    def _fetch(self, url: str) -> tuple[bytes | None, tuple[str, str] | None]:
        cfg = self.config
        directives = {d.strip().lower() for d in cfg.disallowed_header_directives} or None
        token = cfg.user_agent_token.strip().lower() if cfg.user_agent_token else None
        for _ in range(cfg.retries + 1):
            data, error = fetch(url, cfg.timeout, cfg.max_bytes, token, directives)
            if error is None or error[0] in FINAL:
                break
        return data, error

    def process(self, table: pa.Table) -> Verdict:
        images = table.column("image").to_pylist()
        urls = table.column("url").to_pylist()
        todo = [i for i, (image, url) in enumerate(zip(images, urls)) if image is None and url]
        errors: dict[int, tuple[str, str]] = {}
        if todo:
            with ThreadPool(min(self.config.threads, len(todo))) as pool:
                for i, (data, error) in zip(todo, pool.map(self._fetch, [urls[i] for i in todo])):
                    if error is not None:
                        errors[i] = error
                    else:
                        images[i] = data
        verdict = Verdict(set_column(table, "image", images, pa.binary()))
        for i, (image, url) in enumerate(zip(images, urls)):
            if i in errors:
                verdict.reject(i, *errors[i])
            elif image is None and not url:
                verdict.reject(i, "missing_url")
        return verdict
