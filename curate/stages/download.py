"""Download stage: fetch each row's `url` with img2dataset's downloader (timeouts, retries,
robots directives), in threads; rows that already hold image bytes are left as they are."""

from __future__ import annotations

import re
from multiprocessing.pool import ThreadPool

import pyarrow as pa
from pydantic import Field

from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict

# img2dataset's default: respect X-Robots-Tag directives that forbid AI use or indexing
DEFAULT_DISALLOWED = ["noai", "noimageai", "noindex", "noimageindex"]
_HTTP_ERROR = re.compile(r"HTTP Error (\d+): (.*)")


class DownloadConfig(StageConfig):
    """Parameters of the download stage (names and defaults as img2dataset's)."""

    timeout: float = Field(10.0, gt=0, description="seconds to wait on a connection or a read")
    retries: int = Field(0, ge=0, description="further attempts after a failed download")
    threads: int = Field(32, gt=0, description="concurrent downloads per worker")
    max_bytes: int | None = Field(20_000_000, gt=0, description="a larger body is rejected as too_large")
    user_agent_token: str | None = Field(None, description="identifies the crawler in the User-Agent header")
    disallowed_header_directives: list[str] = Field(DEFAULT_DISALLOWED, description="X-Robots-Tag directives to obey")


def classify(error: str) -> tuple[str, str]:
    """(reason, value) for img2dataset's error message: an HTTP status, a timeout, a cut-off body..."""
    if match := _HTTP_ERROR.search(error):
        if "redirect" in match.group(2) and "loop" in match.group(2):
            return "redirect_loop", error
        return "http_error", f"{match.group(1)} {match.group(2)}"
    lowered = error.lower()
    if "timed out" in lowered:
        return "timeout", error
    if "incompleteread" in lowered.replace(" ", "") or "incomplete read" in lowered:
        return "truncated_download", error[:200]
    if "x-robots-tag" in lowered:
        return "robots_disallowed", error
    return "download_error", error[:200]


class Download(MapStage):
    """Download images from `url` with img2dataset's downloader; the HTTP status or error goes to the ledger."""

    name = "download"
    Config = DownloadConfig
    reads = ("url",)
    writes = {"image": pa.binary()}
    reasons = ("missing_url", "http_error", "timeout", "truncated_download", "redirect_loop", "robots_disallowed",
               "too_large", "download_error")

    def _fetch(self, url: str) -> tuple[bytes | None, str | None]:
        from img2dataset.downloader import download_image_with_retry

        cfg = self.config
        directives = {d.strip().lower() for d in cfg.disallowed_header_directives} or None
        token = cfg.user_agent_token.strip().lower() if cfg.user_agent_token else None
        _, stream, error = download_image_with_retry((0, url), cfg.timeout, cfg.retries, token, directives)
        return (stream.getvalue(), None) if stream is not None else (None, error or "no data")

    def process(self, table: pa.Table) -> Verdict:
        images = table.column("image").to_pylist()
        urls = table.column("url").to_pylist()
        todo = [i for i, (image, url) in enumerate(zip(images, urls)) if image is None and url]
        errors: dict[int, tuple[str, str]] = {}
        if todo:
            with ThreadPool(min(self.config.threads, len(todo))) as pool:
                for i, (data, error) in zip(todo, pool.map(self._fetch, [urls[i] for i in todo])):
                    if error is not None:
                        errors[i] = classify(error)
                    elif self.config.max_bytes is not None and len(data) > self.config.max_bytes:
                        errors[i] = ("too_large", f"{len(data)} B > {self.config.max_bytes} B")
                    else:
                        images[i] = data
        verdict = Verdict(set_column(table, "image", images, pa.binary()))
        for i, (image, url) in enumerate(zip(images, urls)):
            if i in errors:
                verdict.reject(i, *errors[i])
            elif image is None and not url:
                verdict.reject(i, "missing_url")
        return verdict
