"""The resumable HTTP(S) downloader of `xdrec fetch --source URL`.

A URL is streamed to <workspace>/cache/downloads/<hash>-<name>.part and renamed to its final name only when
complete, so only whole downloads are reused. An interrupted try is resumed with an HTTP Range request
(If-Range: the same file, else it is sent whole). Redirects are followed only to http(s), never from https
to http, and a redirect to another address is said on stderr. A download that is not data (an HTML page, a
gzip file that is not gzip) is deleted rather than cached.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from xdrec.errors import XdrecError, first_line


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def local_path(source: str) -> str:
    """`source` with a file:// URL turned into its path; raise for a scheme other than http(s) and file.

    (A Windows drive letter, "C:\\data", parses as a one-letter scheme: that is a path too.)
    """
    parts = urllib.parse.urlsplit(source)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise XdrecError(
                f"{source} is on another machine ({parts.netloc}): copy it here or serve it over https"
            )
        return urllib.request.url2pathname(parts.path)
    if parts.scheme and len(parts.scheme) > 1 and parts.scheme not in ("http", "https"):
        raise XdrecError(
            f"--source {source}: {parts.scheme}:// is not supported; use https://, a file or a folder"
        )
    return source


def url_cache_path(url: str, folder: Path) -> Path:
    """Where a URL's download is kept: the file name it ends with, prefixed by a hash of the whole URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return folder / f"{digest}-{url_file_name(url)}"


def url_file_name(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise XdrecError(
            f"{url} names no file: it should end in <Domain>.jsonl.gz (or another supported format)"
        )
    return name


def download_url(url: str, folder: Path, *, progress: bool) -> Path:
    """Download `url` once into `folder`, resuming a partial download left by an interrupted try."""
    dest = url_cache_path(url, folder)
    if dest.exists() and _looks_like_data(dest):  # only complete downloads get this name
        return dest
    dest.unlink(missing_ok=True)  # cached by an older xdrec that did not check: fetch it again
    folder.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _transfer(url, part, progress=progress)
    except urllib.error.HTTPError as e:
        raise XdrecError(f"cannot download {url} (HTTP {e.code} {e.reason}): check the address") from None
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, a connection cut mid-transfer
        raise XdrecError(
            f"download of {url} failed ({first_line(e) or type(e).__name__}): run the same command again to "
            "resume it"
        ) from None
    if not _looks_like_data(part):
        part.unlink()
        _validator_path(part).unlink(missing_ok=True)
        raise XdrecError(
            f"{url} did not send a {url_file_name(url)} file (its first bytes are not that format; an HTML "
            "page?): check the address"
        )
    os.replace(part, dest)
    _validator_path(part).unlink(missing_ok=True)
    return dest


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only, never from https down to http; say where the file really is."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        old, new = urllib.parse.urlsplit(req.full_url).scheme, urllib.parse.urlsplit(newurl).scheme
        if new not in ("http", "https") or (old == "https" and new == "http"):
            raise XdrecError(
                f"{req.full_url} redirects to {newurl}: only redirects to https (or http from http) are "
                "followed; pass the address you trust with --source"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_Redirects)


def _looks_like_data(path: Path) -> bool:
    """Whether a download starts as its name says: gzip or Parquet magic, else not an HTML page."""
    with path.open("rb") as f:
        head = f.read(512)
    name = path.name.removesuffix(".part").lower()
    if name.endswith(".gz"):
        return head[:2] == b"\x1f\x8b"
    if name.endswith(".parquet"):
        return head[:4] == b"PAR1"
    start = head.lstrip()[:15].lower()
    return bool(start) and not start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head"))


def _transfer(url: str, part: Path, *, progress: bool) -> None:
    """Append the rest of `url` to `part` (restart it if the server cannot resume), then check its size."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers=_resume_headers(part, offset))
    try:
        response = _OPENER.open(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:
            raise
        # 416: nothing left after `offset`. The part is complete if that is the file's size, else stale.
        if _content_range_total(e.headers.get("Content-Range")) == offset:
            return
        part.unlink()
        raise XdrecError(
            f"the partial download of {url} no longer matches it: run the same command again"
        ) from None
    with response:
        if response.geturl() != url:
            Console(stderr=True).print(
                f"{url} redirected to {response.geturl()}", highlight=False, soft_wrap=True
            )
        if response.headers.get_content_type() == "text/html":
            raise XdrecError(f"{response.geturl()} sent an HTML page, not a data file: check the address")
        resumed = response.status == 206
        if resumed and _content_range_start(response.headers.get("Content-Range")) != offset:
            part.unlink()
            raise XdrecError(f"{url} sent the wrong part of the file: run the same command again to restart")
        if not resumed:  # a 200 is the whole file: the server ignored Range, or the file changed
            offset = 0
            _save_validator(part, response.headers)
        total = _expected_size(response, offset)
        with part.open("ab" if resumed else "wb") as out:
            _copy(response, out, offset, total, url, progress=progress)
    size = part.stat().st_size
    if total is not None and size != total:
        raise XdrecError(
            f"download of {url} stopped at {size:,} of {total:,} bytes: run the same command again"
        )


def _resume_headers(part: Path, offset: int) -> dict[str, str]:
    if not offset:
        return {}
    headers = {"Range": f"bytes={offset}-"}
    validator = _validator_path(part)
    if validator.exists():  # If-Range: resume only if the file is the one we started, else send it whole
        headers["If-Range"] = validator.read_text().strip()
    return headers


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _save_validator(part: Path, headers: http.client.HTTPMessage) -> None:
    etag = headers.get("ETag")
    # If-Range takes a strong ETag or a date; weak ETags ("W/...") are not allowed there.
    value = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
    path = _validator_path(part)
    if value:
        path.write_text(value)
    else:
        path.unlink(missing_ok=True)


def _content_range_start(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    return int(match.group(1)) if match else None


def _content_range_total(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (header or "").strip())
    return int(match.group(1)) if match else None


def _expected_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    total = _content_range_total(response.headers.get("Content-Range"))
    if total is not None:
        return total
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _copy(
    response: http.client.HTTPResponse,
    out: IO[bytes],
    done: int,
    total: int | None,
    url: str,
    *,
    progress: bool,
) -> None:
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(
        *columns, TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not progress
    ) as bar:
        task = bar.add_task(f"downloading {url_file_name(url)}", total=total, completed=done)
        while chunk := response.read(1 << 20):
            out.write(chunk)
            bar.advance(task, len(chunk))
