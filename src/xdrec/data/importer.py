"""The multi-format importer of `xdrec fetch`: one local file into raw/<Domain>.parquet.

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
import gzip
import json
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from xdrec.data.schema import AMAZON_COLUMNS
from xdrec.errors import XdrecError, first_line
from xdrec.workspace import atomic_path, literal_path, temp_name

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
    with tempfile.TemporaryDirectory(prefix=temp_name(out.stem), dir=out.parent) as scratch:
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
        return first_line(e)
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
    frame = pl.scan_ndjson(literal_path(path), schema=dict.fromkeys(naming, pl.String()))
    return _columns(frame, naming, list(naming), path.name)


def _scan_csv(path: Path) -> _Columns:
    frame = pl.scan_csv(path, infer_schema=False, glob=False)  # all text, for the same reason as JSON
    return _columns_from_header(frame, path)


def _scan_parquet(path: Path) -> _Columns:
    return _columns_from_header(pl.scan_parquet(path, glob=False), path)


def _columns_from_header(frame: pl.LazyFrame, path: Path) -> _Columns:
    try:
        present = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise XdrecError(f"cannot read {path.name}: {first_line(e)}") from None
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
    stage = pl.scan_parquet(staged.path, glob=False)
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
    good = pl.scan_parquet(staging, glob=False).filter(pl.col("problem").is_null())
    good.select("user", "item", "rating", "timestamp", domain=pl.lit(domain, dtype=pl.String())).sink_parquet(
        out
    )


def _summarise(path: Path) -> tuple[int, int, int]:
    """Rows, distinct users and distinct items of a raw file."""
    counts = pl.scan_parquet(path, glob=False).select(
        pl.len(), pl.col("user").n_unique(), pl.col("item").n_unique()
    )
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
            f"cannot read {path} ({first_line(e)}): if it was downloaded, delete it and fetch it again"
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
