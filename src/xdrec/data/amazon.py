"""`xdrec fetch`: Amazon Reviews 2023 interactions, from the hub or local files, into raw/<Domain>.parquet.

Where the bytes come from
    no source      `hf_hub_download` of McAuley-Lab/Amazon-Reviews-2023, raw/review_categories/<Domain>.jsonl.
                   The hub client resumes interrupted downloads and keeps the file in <workspace>/cache/hub
                   (its own cache layout), so a second fetch converts again without downloading. The cache
                   is per workspace on purpose: Books alone is ~20 GB of JSON, and deleting the workspace (or
                   just its cache/ once raw/ is written) should give that space back.
    URL            streamed to <workspace>/cache/downloads/ and resumed with an HTTP Range request when an
                   earlier try was cut off. A URL ending in "/" is a folder: <Domain>.jsonl.gz is appended
                   (the layout of the McAuley Lab site).
    local path     a .jsonl(.gz) / .parquet / .csv file holding one domain, or a folder of <Domain>.<ext>
                   files.

How a file becomes raw/<Domain>.parquet
    1. One streaming Polars pass reads only the four fields we keep (review text is parsed past, never held)
       and writes a staging Parquet file: the typed columns plus `problem`, a reason for each bad row.
    2. Cheap passes over that small file count the bad rows and either refuse the import, naming the first
       few lines, or (skip_bad) drop them while writing the output atomically.
    Malformed JSON stops Polars' reader without saying where, so only then does a slower Python pass find
    the line numbers (and, with skip_bad, writes the well-formed lines to a clean file to convert instead).

Accepted fields: the Amazon 2023 ones (user_id, parent_asin, rating, timestamp) or the raw ones (user, item,
rating, timestamp[, domain]; a domain column is replaced by the domain name). rating may be absent or null
(implicit feedback); timestamp is integer Unix milliseconds, as in the 2023 release.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gzip
import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import polars as pl
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.errors import HTTPError as HubNetworkError
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from xdrec.data.schema import AMAZON_COLUMNS
from xdrec.errors import XdrecError
from xdrec.workspace import Workspace, atomic_path

HUB_REPO = "McAuley-Lab/Amazon-Reviews-2023"

# The review files of the 2023 release. "Unknown" (reviews of items with no main category) is a real file
# of the release, so it is accepted: refusing a download that exists would help nobody.
CATEGORIES: tuple[str, ...] = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food",
    "Handmade_Products", "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV",
    "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software",
    "Sports_and_Outdoors", "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games",
    "Video_Games", "Unknown",
)  # fmt: skip

# Suffixes of a source file and the reader each needs. In a --source folder they are tried in this order
# for <Domain><suffix>: Parquet first, as it is the cheapest to read.
Format = Literal["parquet", "json", "csv"]
FORMATS: dict[str, Format] = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".ndjson": "json",
    ".ndjson.gz": "json",
    ".json": "json",
    ".json.gz": "json",
    ".csv": "csv",
}

# The two namings a source may use, each mapping its field names to the raw ones.
_RAW_NAMES = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
_NAMINGS = (AMAZON_COLUMNS, _RAW_NAMES)
_EXPECTED = (
    "the Amazon 2023 fields user_id, parent_asin, rating, timestamp "
    "or the raw ones user, item, rating, timestamp"
)
_REQUIRED = ("user", "item", "timestamp")  # rating may be missing: implicit-feedback data has none
_MAX_REPORTED = 5  # bad lines named in an error message
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_SKIP_HINT = "fix them or rerun with --skip-bad to drop them"


@dataclass(frozen=True)
class FetchResult:
    """What one domain's import produced."""

    domain: str
    path: Path  # raw/<Domain>.parquet
    rows: int  # interactions written
    users: int
    items: int
    skipped: int  # bad lines dropped (only with skip_bad)
    origin: str  # hf://datasets/..., a URL, or a local path

    def as_dict(self) -> dict[str, str | int]:
        """JSON-ready fields, for `--json` output."""
        return {**dataclasses.asdict(self), "path": str(self.path)}


# --- names -------------------------------------------------------------------------------------------


def check_category(name: str) -> None:
    """Raise unless `name` is an Amazon Reviews 2023 category, suggesting the closest ones if it is not."""
    if name in CATEGORIES:
        return
    folded = {c.casefold(): c for c in CATEGORIES}
    close = difflib.get_close_matches(name.casefold(), list(folded), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(folded[c]) for c in close) + "?"
    else:
        hint = "the categories are " + ", ".join(CATEGORIES)
    raise XdrecError(
        f"{name!r} is not an Amazon Reviews 2023 category; {hint} (to import other data, pass --source PATH)"
    )


def check_domain_name(name: str) -> None:
    """Raise unless `name` is safe as a file name: it becomes raw/<name>.parquet and part of dataset names."""
    if not _SAFE_NAME.fullmatch(name):
        raise XdrecError(
            f"{name!r} cannot be a domain name: use up to 64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )


def hub_filename(domain: str) -> str:
    return f"raw/review_categories/{domain}.jsonl"


# --- fetch: plan, download, import -------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    kind: Literal["hub", "url", "file"]
    location: str  # hub file name, URL, or local path

    def describe(self) -> str:
        return f"hf://datasets/{HUB_REPO}/{self.location}" if self.kind == "hub" else self.location


def fetch(
    workspace: Workspace,
    domains: Sequence[str],
    source: str | None = None,
    *,
    skip_bad: bool = False,
    progress: bool = True,
) -> list[FetchResult]:
    """Write raw/<Domain>.parquet for each domain, from the hub (no `source`), a URL, a file or a folder.

    Every name and source is checked before anything is downloaded. Each output is written atomically, so
    a failure leaves that domain's earlier file (and the domains already done) intact.
    """
    results = []
    for domain, origin in _plan(domains, source):
        local = _materialise(origin, workspace, progress=progress)
        result = import_file(local, domain, workspace.raw(domain), skip_bad=skip_bad, progress=progress)
        results.append(dataclasses.replace(result, origin=origin.describe()))
    return results


def _plan(domains: Sequence[str], source: str | None) -> list[tuple[str, _Origin]]:
    names = list(dict.fromkeys(domains))  # a domain named twice is fetched once
    if not names:
        raise XdrecError("name at least one domain, e.g. `xdrec fetch Books Movies_and_TV`")
    if source is None:
        for name in names:
            check_category(name)
        return [(name, _Origin("hub", hub_filename(name))) for name in names]
    for name in names:
        check_domain_name(name)
    if _is_url(source):
        return [
            (name, _Origin("url", url)) for name, url in zip(names, _source_urls(source, names), strict=True)
        ]
    paths = _source_files(Path(source).expanduser(), names)
    return [(name, _Origin("file", str(path))) for name, path in zip(names, paths, strict=True)]


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def _source_urls(source: str, names: list[str]) -> list[str]:
    if source.endswith("/"):
        return [f"{source}{name}.jsonl.gz" for name in names]
    if len(names) > 1:
        raise XdrecError(
            f"--source {source} is one file, so it holds one domain, but {len(names)} were named: fetch them "
            "one at a time, or pass a URL ending in '/' to fetch <Domain>.jsonl.gz from that folder"
        )
    format_of(Path(_url_file_name(source)))  # refuse an unknown format before downloading it
    return [source]


def _source_files(path: Path, names: list[str]) -> list[Path]:
    if path.is_dir():
        return [_find_in_folder(path, name) for name in names]
    if not path.exists():
        raise XdrecError(f"--source {path} does not exist: pass a data file, a folder of them, or a URL")
    if len(names) > 1:
        raise XdrecError(
            f"--source {path} is one file, so it holds one domain, but {len(names)} were named: fetch them "
            "one at a time, or pass a folder holding <Domain>.<ext> files"
        )
    format_of(path)
    return [path]


def _find_in_folder(folder: Path, name: str) -> Path:
    for suffix in FORMATS:
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    raise XdrecError(f"no {name}.<ext> in {folder} (looked for {', '.join(name + s for s in FORMATS)})")


def _materialise(origin: _Origin, workspace: Workspace, *, progress: bool) -> Path:
    """A local file holding the origin's bytes, downloading it into the workspace cache if need be."""
    if origin.kind == "hub":
        return _download_hub(origin.location, workspace.cache_dir / "hub", progress=progress)
    if origin.kind == "url":
        return _download_url(origin.location, workspace.cache_dir / "downloads", progress=progress)
    return Path(origin.location)


# --- the hub -----------------------------------------------------------------------------------------


def _download_hub(filename: str, cache: Path, *, progress: bool) -> Path:
    what = f"{HUB_REPO}/{filename}"
    try:
        with _hub_progress_bars(progress):
            local = hf_hub_download(HUB_REPO, filename, repo_type="dataset", cache_dir=cache)
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is a subclass raised when offline
        raise XdrecError(
            f"cannot reach the Hugging Face hub to download {what} (and it is not in {cache}): check the "
            "connection, or import a local copy with --source PATH"
        ) from None
    except EntryNotFoundError:
        raise XdrecError(f"the hub has no {what}: import a local copy with --source PATH") from None
    except (HfHubHTTPError, HubNetworkError, OSError) as e:
        raise XdrecError(
            f"download of {what} failed ({_first_line(e)}): run the same command again to resume, or import "
            "a local copy with --source PATH"
        ) from None
    return Path(local)


@contextlib.contextmanager
def _hub_progress_bars(enabled: bool) -> Iterator[None]:
    """The hub client draws its own (tqdm) download bar: silence it when asked, restoring the setting."""
    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


# --- URLs --------------------------------------------------------------------------------------------


def url_cache_path(url: str, folder: Path) -> Path:
    """Where a URL's download is kept: the file name it ends with, prefixed by a hash of the whole URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return folder / f"{digest}-{_url_file_name(url)}"


def _url_file_name(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise XdrecError(
            f"{url} names no file: it should end in <Domain>.jsonl.gz (or another supported format)"
        )
    return name


def _download_url(url: str, folder: Path, *, progress: bool) -> Path:
    """Download `url` once into `folder`, resuming a partial download left by an interrupted try."""
    dest = url_cache_path(url, folder)
    if dest.exists():  # only complete downloads get this name
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _transfer(url, part, progress=progress)
    except urllib.error.HTTPError as e:
        raise XdrecError(f"cannot download {url} (HTTP {e.code} {e.reason}): check the address") from None
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, a connection cut mid-transfer
        raise XdrecError(
            f"download of {url} failed ({_first_line(e) or type(e).__name__}): run the same command again to "
            "resume it"
        ) from None
    os.replace(part, dest)
    _validator_path(part).unlink(missing_ok=True)
    return dest


def _transfer(url: str, part: Path, *, progress: bool) -> None:
    """Append the rest of `url` to `part` (restart it if the server cannot resume), then check its size."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers=_resume_headers(part, offset))
    try:
        response = urllib.request.urlopen(request, timeout=60)
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
        *columns, TimeRemainingColumn(), console=_console(), transient=True, disable=not progress
    ) as bar:
        task = bar.add_task(f"downloading {_url_file_name(url)}", total=total, completed=done)
        while chunk := response.read(1 << 20):
            out.write(chunk)
            bar.advance(task, len(chunk))


# --- import ------------------------------------------------------------------------------------------


def format_of(path: Path) -> Format:
    """The reader a file needs, from its suffix."""
    name = path.name.lower()
    for suffix, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):  # .jsonl.gz before .gz-less
        if name.endswith(suffix):
            return fmt
    raise XdrecError(f"{path.name}: unsupported file type; use one of {', '.join(FORMATS)}")


@dataclass(frozen=True)
class _Staged:
    """The staging file of one import: typed columns, `row` (0-based) and `problem` (null when good)."""

    path: Path
    skipped: int  # lines dropped before staging (malformed JSON, with skip_bad)
    locate: Callable[[list[int]], list[str]]  # staging rows -> "line 12" / "row 12" in the source


def import_file(
    path: Path, domain: str, out: Path, *, skip_bad: bool = False, progress: bool = False
) -> FetchResult:
    """Convert one local file (any supported format and naming) into `out` in the raw schema.

    Bad lines (malformed JSON, a missing id or timestamp, a timestamp that is not an integer, a rating that
    is not a number) make it raise, naming the first few; with `skip_bad` they are dropped and counted.
    """
    fmt = format_of(path)
    _check_readable(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.stem}.", dir=out.parent) as scratch:
        staged = _stage(path, fmt, Path(scratch), skip_bad=skip_bad, progress=progress)
        bad = _check_staged(staged, path.name, skip_bad=skip_bad)
        with atomic_path(out) as tmp:
            _write_raw(staged.path, domain, tmp)
    rows, users, items = _summarise(out)
    return FetchResult(domain, out, rows, users, items, staged.skipped + bad, origin=str(path))


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb") as f:
            first = f.read(1)
    except OSError as e:
        raise XdrecError(f"cannot read {path}: {e.strerror or e}") from None
    if not first:
        raise XdrecError(f"{path} is empty: there is nothing to import")


def _stage(path: Path, fmt: Format, scratch: Path, *, skip_bad: bool, progress: bool) -> _Staged:
    staging = scratch / "staging.parquet"
    if fmt == "json":
        return _stage_json(path, staging, scratch, skip_bad=skip_bad, progress=progress)
    columns = _scan_csv(path) if fmt == "csv" else _scan_parquet(path)
    error = _try_sink(columns, staging, path, progress=progress)
    if error:
        raise XdrecError(f"cannot read {path.name} as {fmt.upper()}: {error}")
    # CSV: line 1 is the header. Parquet has no lines, so its rows are counted from 1.
    if fmt == "csv":
        return _Staged(staging, 0, lambda rows: [f"line {r + 2}" for r in rows])
    return _Staged(staging, 0, lambda rows: [f"row {r + 1}" for r in rows])


def _stage_json(path: Path, staging: Path, scratch: Path, *, skip_bad: bool, progress: bool) -> _Staged:
    error = _try_sink(_scan_json(path), staging, path, progress=progress)
    if not error:
        return _Staged(staging, 0, lambda rows: _json_line_numbers(path, rows))
    clean = scratch / "clean.jsonl"  # same line numbers as the source: bad lines are left blank
    count, first = _find_malformed(path, clean if skip_bad else None)
    if not count:  # the reader failed for a reason of its own
        raise XdrecError(f"cannot read {path.name} as JSON lines: {error}")
    if not skip_bad:
        more = f" (and {count - len(first)} more)" if count > len(first) else ""
        raise XdrecError(
            f"{path.name}: {count:,} malformed JSON line(s): {'; '.join(first)}{more}; {_SKIP_HINT}"
        )
    error = _try_sink(_scan_json(clean), staging, path, progress=progress)
    if error:
        raise XdrecError(f"cannot read {path.name} as JSON lines: {error}")
    return _Staged(staging, count, lambda rows: _json_line_numbers(clean, rows))


def _try_sink(columns: _Columns, staging: Path, source: Path, *, progress: bool) -> str | None:
    """Run the one pass over the source into the staging file; the reader's message if it fails."""
    try:
        with _activity(f"converting {source.name} ({_size(source)})", progress):
            _with_problems(columns).sink_parquet(staging)
    except (pl.exceptions.PolarsError, OSError) as e:  # Polars reports a damaged gzip stream as OSError
        return _first_line(e)
    return None


# --- reading each format: the four columns under raw names, as the source typed them --------------------


@dataclass(frozen=True)
class _Columns:
    frame: pl.LazyFrame  # row, user, item, rating, timestamp
    names: dict[str, str]  # raw name -> the source's own name, for messages
    where: str  # the file, for column-level errors


def _scan_json(path: Path) -> _Columns:
    naming = _json_naming(_first_json_record(path))
    # Reading every field as text never fails on a type (numbers come back as their digits), so type
    # problems become per-row reasons with line numbers instead of one error for the whole file.
    frame = pl.scan_ndjson(path, schema=dict.fromkeys(naming, pl.String()))
    return _columns(frame, naming, list(naming), path.name)


def _scan_csv(path: Path) -> _Columns:
    frame = pl.scan_csv(path, infer_schema=False)  # all text, for the same reason as JSON
    return _columns_from_header(frame, path)


def _scan_parquet(path: Path) -> _Columns:
    return _columns_from_header(pl.scan_parquet(path), path)


def _columns_from_header(frame: pl.LazyFrame, path: Path) -> _Columns:
    try:
        present = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise XdrecError(f"cannot read {path.name}: {_first_line(e)}") from None
    naming = _header_naming(present, path.name)
    return _columns(frame, naming, present, path.name)


def _header_naming(present: list[str], where: str) -> dict[str, str]:
    """The naming the header uses (the closer one if neither is complete); raise if columns are missing."""

    def absent(naming: dict[str, str]) -> list[str]:
        return [source for source, raw in naming.items() if raw in _REQUIRED and source not in present]

    naming = min(_NAMINGS, key=lambda n: len(absent(n)))  # a tie goes to the first, Amazon's
    if absent(naming):
        raise XdrecError(f"{where}: missing column(s) {', '.join(absent(naming))}; expected {_EXPECTED}")
    return naming


def _json_naming(record: dict | None) -> dict[str, str]:
    """Raw naming if the first record uses it, else Amazon (missing fields are then reported per line)."""
    if record and not {"user_id", "parent_asin"} & record.keys() and {"user", "item"} & record.keys():
        return _RAW_NAMES
    return AMAZON_COLUMNS


def _columns(frame: pl.LazyFrame, naming: dict[str, str], present: list[str], where: str) -> _Columns:
    names = {raw: source for source, raw in naming.items()}
    selected = [pl.col(source).alias(raw) for source, raw in naming.items() if source in present]
    if names["rating"] not in present:
        selected.append(pl.lit(None, dtype=pl.Float32()).alias("rating"))
    # The index is added after the projection, so a source column named "row" cannot collide with it.
    return _Columns(frame.select(selected).with_row_index("row"), names, where)


def _first_json_record(path: Path) -> dict | None:
    """The first non-blank line as an object, or None if it is not one (the full pass will say where)."""
    with _open_lines(path) as lines:
        for line in lines:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    return None
                return record if isinstance(record, dict) else None
    return None


# --- typing and checking rows --------------------------------------------------------------------------


def _with_problems(columns: _Columns) -> pl.LazyFrame:
    """The typed columns, plus `problem`: why a row is bad, or null."""
    schema = columns.frame.collect_schema()
    typed = columns.frame.with_columns(
        user=_as_text(schema["user"], "user", columns),
        item=_as_text(schema["item"], "item", columns),
        _rating=_as_rating(schema["rating"], columns),
        _timestamp=_as_ms(schema["timestamp"], columns),
    )
    return typed.select(
        "row",
        "user",
        "item",
        rating=pl.col("_rating"),
        timestamp=pl.col("_timestamp"),
        problem=_problem(columns.names),
    )


def _as_text(dtype: pl.DataType, column: str, columns: _Columns) -> pl.Expr:
    if dtype == pl.String:
        return pl.col(column)
    if dtype.is_integer() or isinstance(dtype, pl.Categorical | pl.Enum | pl.Null):
        return pl.col(column).cast(pl.String)
    raise _column_type_error(column, dtype, "text", columns)


def _as_rating(dtype: pl.DataType, columns: _Columns) -> pl.Expr:
    if dtype == pl.String or dtype.is_numeric() or dtype == pl.Null:
        return pl.col("rating").cast(pl.Float32, strict=False)
    raise _column_type_error("rating", dtype, "a number", columns)


def _as_ms(dtype: pl.DataType, columns: _Columns) -> pl.Expr:
    ts = pl.col("timestamp")
    if dtype == pl.String or dtype.is_integer() or dtype == pl.Null:
        return ts.cast(pl.Int64, strict=False)
    if dtype.is_float():  # accepted only where the value is a whole number
        return pl.when(ts == ts.floor()).then(ts.cast(pl.Int64, strict=False))
    if isinstance(dtype, pl.Datetime | pl.Date):
        return ts.dt.epoch("ms")
    raise _column_type_error("timestamp", dtype, "integer Unix milliseconds", columns)


def _column_type_error(column: str, dtype: pl.DataType, expected: str, columns: _Columns) -> XdrecError:
    return XdrecError(f"{columns.where}: column {columns.names[column]} is {dtype}, expected {expected}")


def _problem(names: dict[str, str]) -> pl.Expr:
    def missing(column: str) -> pl.Expr:
        return pl.col(column).is_null() | (pl.col(column) == "")

    def quoted(column: str) -> pl.Expr:
        return pl.concat_str(pl.lit("'"), pl.col(column).cast(pl.String).str.slice(0, 40), pl.lit("'"))

    rating = pl.col("_rating")
    not_integer = pl.concat_str(
        pl.lit(f"{names['timestamp']} "), quoted("timestamp"), pl.lit(" is not an integer")
    )
    not_number = pl.concat_str(pl.lit(f"{names['rating']} "), quoted("rating"), pl.lit(" is not a number"))
    return (
        pl.when(missing("user")).then(pl.lit(f"missing {names['user']}"))
        .when(missing("item")).then(pl.lit(f"missing {names['item']}"))
        .when(pl.col("timestamp").is_null()).then(pl.lit(f"missing {names['timestamp']}"))
        .when(pl.col("_timestamp").is_null()).then(not_integer)
        .when(pl.col("rating").is_not_null() & (rating.is_null() | rating.is_nan())).then(not_number)
    )  # fmt: skip


def _check_staged(staged: _Staged, name: str, *, skip_bad: bool) -> int:
    """The number of bad rows to drop; raise if there are any and dropping was not asked for, or no rows."""
    stage = pl.scan_parquet(staged.path)
    rows, bad = stage.select(pl.len(), pl.col("problem").is_not_null().sum()).collect().row(0)
    if rows == 0:
        raise XdrecError(f"{name} holds no interactions: there is nothing to import")
    if bad and not skip_bad:
        raise XdrecError(f"{name}: {bad:,} bad row(s): {_first_problems(stage, staged, bad)}; {_SKIP_HINT}")
    if bad == rows:
        raise XdrecError(f"{name}: all {rows:,} rows are bad ({_first_problems(stage, staged, bad)})")
    return bad


def _first_problems(stage: pl.LazyFrame, staged: _Staged, bad: int) -> str:
    first = (
        stage.filter(pl.col("problem").is_not_null()).select("row", "problem").head(_MAX_REPORTED).collect()
    )
    places = staged.locate(first["row"].to_list())
    text = "; ".join(f"{place}: {problem}" for place, problem in zip(places, first["problem"], strict=True))
    return text + (f" (and {bad - first.height:,} more)" if bad > first.height else "")


def _write_raw(staging: Path, domain: str, out: Path) -> None:
    good = pl.scan_parquet(staging).filter(pl.col("problem").is_null())
    good.select("user", "item", "rating", "timestamp", domain=pl.lit(domain, dtype=pl.String())).sink_parquet(
        out
    )


def _summarise(path: Path) -> tuple[int, int, int]:
    """Rows, distinct users and distinct items of a raw file."""
    counts = pl.scan_parquet(path).select(pl.len(), pl.col("user").n_unique(), pl.col("item").n_unique())
    rows, users, items = counts.collect().row(0)
    return rows, users, items


# --- the slow JSON pass: line numbers, only when something is wrong -------------------------------------


@contextlib.contextmanager
def _open_lines(path: Path) -> Iterator[Iterator[bytes]]:
    """The file's lines as bytes, gunzipped if need be; a damaged gzip file becomes a one-line error."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            yield f
    except (OSError, EOFError, zlib.error) as e:
        raise XdrecError(
            f"cannot read {path} ({_first_line(e)}): if it was downloaded, delete it and fetch it again"
        ) from None


def _json_line_numbers(path: Path, records: list[int]) -> list[str]:
    """Map record indices (Polars skips blank lines) to "line N" in the file."""
    wanted = set(records)
    found: dict[int, int] = {}
    index = 0
    with _open_lines(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not wanted - found.keys():
                break
            if line.strip():
                if index in wanted:
                    found[index] = number
                index += 1
    return [f"line {found[r]}" if r in found else f"record {r + 1}" for r in records]


def _find_malformed(path: Path, clean: Path | None) -> tuple[int, list[str]]:
    """Count lines that are not JSON objects and name the first few.

    With `clean`, write each good line's fields there, line for line (bad ones blank, which Polars skips),
    so line numbers in `clean` are those of the source.
    """
    keep = {*AMAZON_COLUMNS, *_RAW_NAMES}
    count, first = 0, []
    with _open_lines(path) as lines, clean.open("w") if clean else contextlib.nullcontext() as out:
        for number, line in enumerate(lines, start=1):
            record, reason = _parse_object(line) if line.strip() else ({}, None)
            if reason:
                count += 1
                if len(first) < _MAX_REPORTED:
                    first.append(f"line {number} ({reason})")
            if out is not None:
                out.write(
                    json.dumps({k: v for k, v in record.items() if k in keep}) + "\n" if record else "\n"
                )
    return count, first


def _parse_object(line: bytes) -> tuple[dict, str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return {}, e.msg
    except UnicodeDecodeError:
        return {}, "not UTF-8"
    return (record, None) if isinstance(record, dict) else ({}, "not a JSON object")


# --- small helpers -------------------------------------------------------------------------------------


def _console() -> Console:
    return Console(stderr=True)  # progress on stderr keeps stdout clean for --json


@contextlib.contextmanager
def _activity(description: str, enabled: bool) -> Iterator[None]:
    """A spinner with elapsed time: Polars' streaming sink reports no progress to draw a bar from."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=_console(), transient=True, disable=not enabled) as bar:
        bar.add_task(description, total=None)
        yield


def _size(path: Path) -> str:
    size = path.stat().st_size
    if size < 1 << 20:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1 << 20):.0f} MB" if size < 1 << 30 else f"{size / (1 << 30):.1f} GB"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
