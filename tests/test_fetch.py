"""xdrec.data.amazon: every source format into raw/<Domain>.parquet, the hub path (mocked), bad input.

No test touches the network: the hub is a monkeypatched `hf_hub_download`, URLs are served on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from huggingface_hub.utils import are_progress_bars_disabled
from polars.testing import assert_frame_equal

from conftest import FOOD_KITCHEN
from xdrec.data import amazon
from xdrec.data.amazon import CATEGORIES, FetchResult, check_category, fetch, import_file
from xdrec.data.schema import RAW_SCHEMA, check_raw_schema
from xdrec.errors import XdrecError
from xdrec.workspace import Workspace

TEXT = "A long review body, which the import must never keep. " * 40

# Amazon 2023 records, with the fields the import drops (text, title, images, votes).
RECORDS = [
    {"user_id": "U1", "parent_asin": "P1", "asin": "A1", "rating": 5.0, "timestamp": 1_600_000_000_000},
    {"user_id": "U1", "parent_asin": "P2", "asin": "A2", "rating": 3.0, "timestamp": 1_600_000_100_000},
    {"user_id": "U2", "parent_asin": "P1", "asin": "A1", "rating": None, "timestamp": 1_600_000_200_000},
    {"user_id": "U3", "parent_asin": "P3", "asin": "A3", "rating": 1.0, "timestamp": 1_381_536_000_000},
]
for _record in RECORDS:
    _record.update(title="Great", text=TEXT, images=[{"url": "x"}], helpful_vote=2, verified_purchase=True)


def expected(domain: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user": [r["user_id"] for r in RECORDS],
            "item": [r["parent_asin"] for r in RECORDS],
            "rating": [r["rating"] for r in RECORDS],
            "timestamp": [r["timestamp"] for r in RECORDS],
            "domain": [domain] * len(RECORDS),
        },
        schema=RAW_SCHEMA,
    )


def amazon_frame() -> pl.DataFrame:
    return expected("x").drop("domain").rename({"user": "user_id", "item": "parent_asin"})


def write_lines(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_jsonl(path: Path, records: list[dict] = RECORDS) -> Path:
    return write_lines(path, [json.dumps(r) for r in records])


def write_parquet_amazon(path: Path) -> Path:
    amazon_frame().write_parquet(path)
    return path


def write_parquet_raw(path: Path) -> Path:
    expected("SomethingElse").write_parquet(path)  # its domain column is replaced by the domain name
    return path


def write_csv_amazon(path: Path) -> Path:
    amazon_frame().write_csv(path)
    return path


def write_csv_raw(path: Path) -> Path:
    expected("x").drop("domain").write_csv(path)
    return path


WRITERS = {
    "Books.jsonl": write_jsonl,
    "Books.jsonl.gz": write_jsonl,
    "Books.parquet": write_parquet_amazon,
    "Books.raw.parquet": write_parquet_raw,
    "Books.csv": write_csv_amazon,
    "Books.raw.csv": write_csv_raw,
}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


def read_raw(ws: Workspace, domain: str) -> pl.DataFrame:
    frame = pl.read_parquet(ws.raw(domain))
    check_raw_schema(frame.schema, str(ws.raw(domain)))
    return frame


def import_error(tmp_path: Path, lines: list[str], *, name: str = "Books.jsonl") -> str:
    source = write_lines(tmp_path / name, lines)
    with pytest.raises(XdrecError) as error:
        import_file(source, "Books", tmp_path / "raw" / "Books.parquet")
    return str(error.value)


# --- every source format ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WRITERS))
def test_import_file_reads_every_format_and_naming(tmp_path: Path, ws: Workspace, name: str) -> None:
    source = WRITERS[name](tmp_path / name)
    result = import_file(source, "Books", ws.raw("Books"))
    assert_frame_equal(read_raw(ws, "Books"), expected("Books"))
    assert result == FetchResult("Books", ws.raw("Books"), 4, 3, 3, 0, str(source))


def test_fetch_from_a_folder_finds_each_domain_file(tmp_path: Path, ws: Workspace) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "Books.jsonl.gz")
    write_csv_amazon(folder / "My-Shop.csv")  # a local source may use any safe name
    results = fetch(ws, ["Books", "My-Shop", "Books"], str(folder), progress=False)
    assert [(r.domain, r.origin) for r in results] == [
        ("Books", str(folder / "Books.jsonl.gz")),
        ("My-Shop", str(folder / "My-Shop.csv")),
    ]
    assert_frame_equal(read_raw(ws, "My-Shop"), expected("My-Shop"))


def test_fetch_from_a_folder_names_the_missing_file(tmp_path: Path, ws: Workspace) -> None:
    with pytest.raises(XdrecError, match=r"no Books\.<ext> in .*Books\.jsonl\.gz"):
        fetch(ws, ["Books"], str(tmp_path), progress=False)


def test_a_file_source_holds_one_domain(tmp_path: Path, ws: Workspace) -> None:
    source = write_jsonl(tmp_path / "Books.jsonl")
    with pytest.raises(XdrecError, match="one file, so it holds one domain"):
        fetch(ws, ["Books", "Movies_and_TV"], str(source), progress=False)


@pytest.mark.parametrize("name", ["../escape", "A+B", "", "x" * 65, ".hidden"])
def test_local_domain_names_must_be_safe_file_names(tmp_path: Path, ws: Workspace, name: str) -> None:
    source = write_jsonl(tmp_path / "Books.jsonl")
    with pytest.raises(XdrecError, match="cannot be a domain name"):
        fetch(ws, [name], str(source), progress=False)


def test_parquet_timestamps_may_be_datetimes_or_whole_floats(tmp_path: Path) -> None:
    when = datetime(2020, 1, 2, tzinfo=timezone.utc)
    frame = pl.DataFrame({"user": ["u", "v"], "item": ["i", "j"], "timestamp": [when, when]})
    frame.write_parquet(tmp_path / "dt.parquet")
    frame.with_columns(timestamp=pl.lit(float(when.timestamp() * 1000))).write_parquet(tmp_path / "f.parquet")
    for name in ("dt.parquet", "f.parquet"):
        import_file(tmp_path / name, "D", tmp_path / "out.parquet")
        out = pl.read_parquet(tmp_path / "out.parquet")
        assert out["timestamp"].to_list() == [int(when.timestamp() * 1000)] * 2
        assert out["rating"].null_count() == 2  # no rating column: implicit feedback


# --- URLs (a server on 127.0.0.1 in a thread) ---------------------------------------------------------


class _RangeServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many bytes of the next response, then hang up
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.content_type = "application/octet-stream"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _RangeHandler(BaseHTTPRequestHandler):
    server: _RangeServer

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[self.path])
            self.end_headers()
            return
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and srv.honour_range:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", '"v1"')
        self.send_header("Content-Type", srv.content_type)
        self.end_headers()
        payload = body[start:]
        if srv.cut_after is not None:
            payload, srv.cut_after = payload[: srv.cut_after], None
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_RangeServer]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback only, never through a proxy
    srv = _RangeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def jsonl_gz_bytes(tmp_path: Path) -> bytes:
    return write_jsonl(tmp_path / "src.jsonl.gz").read_bytes()


def test_fetch_from_a_url_downloads_once_into_the_cache(
    tmp_path: Path, ws: Workspace, server: _RangeServer
) -> None:
    server.files["/data/Books.jsonl.gz"] = jsonl_gz_bytes(tmp_path)
    url = server.url("/data/Books.jsonl.gz")
    [result] = fetch(ws, ["Books"], url, progress=False)
    assert result.origin == url and result.rows == 4
    assert_frame_equal(read_raw(ws, "Books"), expected("Books"))
    assert amazon.url_cache_path(url, ws.cache_dir / "downloads").exists()
    fetch(ws, ["Books"], url, progress=False)
    assert len(server.requests) == 1  # the second fetch reused the cached download


def test_a_url_folder_gets_domain_jsonl_gz_appended(
    tmp_path: Path, ws: Workspace, server: _RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["/amazon_2023/Books.jsonl.gz"] = jsonl_gz_bytes(tmp_path)
    server.files["/amazon_2023/Gift_Cards.jsonl.gz"] = jsonl_gz_bytes(tmp_path)
    results = fetch(ws, ["Books", "Gift_Cards"], server.url("/amazon_2023/"), progress=True)
    assert [r.rows for r in results] == [4, 4]
    assert capsys.readouterr().out == ""  # progress goes to stderr: stdout stays clean for --json


@pytest.mark.parametrize("honour_range", [True, False])
def test_an_interrupted_download_resumes(
    tmp_path: Path, ws: Workspace, server: _RangeServer, honour_range: bool
) -> None:
    body = jsonl_gz_bytes(tmp_path)
    server.files["/Books.jsonl.gz"] = body
    server.honour_range = honour_range
    server.cut_after = len(body) // 2
    url = server.url("/Books.jsonl.gz")
    with pytest.raises(XdrecError, match="run the same command again"):
        fetch(ws, ["Books"], url, progress=False)
    assert not ws.raw("Books").exists()

    [result] = fetch(ws, ["Books"], url, progress=False)
    assert server.requests[1] == ("/Books.jsonl.gz", f"bytes={len(body) // 2}-")
    assert result.rows == 4  # a server that ignores Range sends it whole: the part is restarted, not appended
    assert amazon.url_cache_path(url, ws.cache_dir / "downloads").read_bytes() == body


def test_a_missing_url_is_one_clear_line(ws: Workspace, server: _RangeServer) -> None:
    with pytest.raises(XdrecError, match=r"cannot download .*HTTP 404.*check the address"):
        fetch(ws, ["Books"], server.url("/nothing/Books.jsonl.gz"), progress=False)


def test_redirects_only_to_http_are_followed_and_said(
    tmp_path: Path, ws: Workspace, server: _RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["/real/Books.jsonl.gz"] = jsonl_gz_bytes(tmp_path)
    server.redirects["/moved/Books.jsonl.gz"] = server.url("/real/Books.jsonl.gz")
    server.redirects["/ftp/Books.jsonl.gz"] = "ftp://127.0.0.1/Books.jsonl.gz"
    [result] = fetch(ws, ["Books"], server.url("/moved/Books.jsonl.gz"), progress=False)
    assert (
        result.rows == 4 and "redirected to " + server.url("/real/Books.jsonl.gz") in capsys.readouterr().err
    )
    with pytest.raises(XdrecError, match=r"redirects to ftp://.*only redirects to https") as error:
        fetch(ws, ["Books"], server.url("/ftp/Books.jsonl.gz"), progress=False)
    assert "run the same command again" not in str(error.value)


def test_an_html_page_is_not_cached_as_data(tmp_path: Path, ws: Workspace, server: _RangeServer) -> None:
    url = server.url("/Books.jsonl.gz")
    server.files["/Books.jsonl.gz"] = b"<!DOCTYPE html><html><body>Sign in</body></html>"
    server.content_type = "text/html"
    with pytest.raises(XdrecError, match="HTML page"):
        fetch(ws, ["Books"], url, progress=False)
    server.content_type = "application/octet-stream"  # a server that does not say so
    with pytest.raises(XdrecError, match=r"did not send a Books\.jsonl\.gz file"):
        fetch(ws, ["Books"], url, progress=False)
    assert not list((ws.cache_dir / "downloads").iterdir())
    server.files["/Books.jsonl.gz"] = jsonl_gz_bytes(tmp_path)  # fixed: the next fetch downloads again
    assert fetch(ws, ["Books"], url, progress=False)[0].rows == 4


def test_a_cached_html_page_from_an_older_version_is_fetched_again(
    tmp_path: Path, ws: Workspace, server: _RangeServer
) -> None:
    url = server.url("/Books.jsonl.gz")
    cached = amazon.url_cache_path(url, ws.cache_dir / "downloads")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"<html>captive portal</html>")
    server.files["/Books.jsonl.gz"] = jsonl_gz_bytes(tmp_path)
    assert fetch(ws, ["Books"], url, progress=False)[0].rows == 4 and len(server.requests) == 1


def test_a_file_url_is_a_local_path_and_other_schemes_are_refused(tmp_path: Path, ws: Workspace) -> None:
    (tmp_path / "my data").mkdir()
    path = write_jsonl(tmp_path / "my data" / "Books.jsonl.gz")
    [result] = fetch(ws, ["Books"], path.as_uri(), progress=False)
    assert result.rows == 4
    with pytest.raises(XdrecError, match="ftp:// is not supported"):
        fetch(ws, ["Books"], "ftp://example.org/Books.jsonl.gz", progress=False)


# --- the hub (hf_hub_download mocked) -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def hub_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """fetch first asks the hub once whether it answers: here it does, with no network."""
    monkeypatch.setattr(amazon, "get_hf_file_metadata", lambda *args, **kwargs: None)


def test_fetch_from_the_hub_converts_the_downloaded_file(
    tmp_path: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append((repo_id, filename, kwargs))
        return str(write_jsonl(tmp_path / "hub.jsonl"))

    monkeypatch.setattr(amazon, "hf_hub_download", fake_download)
    [result] = fetch(ws, ["Gift_Cards"], progress=True)
    [(repo_id, filename, kwargs)] = calls
    assert (repo_id, filename) == (
        "McAuley-Lab/Amazon-Reviews-2023",
        "raw/review_categories/Gift_Cards.jsonl",
    )
    assert kwargs["repo_type"] == "dataset" and kwargs["cache_dir"] == ws.cache_dir / "hub"
    assert (
        result.origin
        == "hf://datasets/McAuley-Lab/Amazon-Reviews-2023/raw/review_categories/Gift_Cards.jsonl"
    )
    assert_frame_equal(read_raw(ws, "Gift_Cards"), expected("Gift_Cards"))


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("Book", "did you mean 'Books'"),
        ("movies_and_tv", "did you mean 'Movies_and_TV'"),
        ("Zzzz", "Video_Games"),
    ],
)
def test_an_unknown_category_gets_a_hint_before_any_download(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, name: str, hint: str
) -> None:
    monkeypatch.setattr(amazon, "hf_hub_download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(XdrecError, match="--source PATH") as error:
        fetch(
            ws, ["Books", name], progress=False
        )  # Books is valid: nothing is fetched before all are checked
    assert hint in str(error.value) and "\n" not in str(error.value)


def test_categories_are_the_2023_release() -> None:
    assert len(CATEGORIES) == 34 and "Unknown" in CATEGORIES
    for name in CATEGORIES:
        check_category(name)


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (
            LocalEntryNotFoundError("not in the local cache"),
            r"cannot reach the Hugging Face hub.*--source PATH",
        ),
        (EntryNotFoundError("404"), r"the hub has no .*Books\.jsonl: import a local copy with --source PATH"),
        (OSError(28, "No space left on device"), r"failed \(.*No space left.*again to resume.*--source PATH"),
    ],
)
def test_hub_failures_are_one_line_naming_source(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, error: Exception, match: str
) -> None:
    def failing(*args: object, **kwargs: object) -> str:
        raise error

    monkeypatch.setattr(amazon, "hf_hub_download", failing)
    with pytest.raises(XdrecError, match=match) as raised:
        fetch(ws, ["Books"], progress=False)
    assert "\n" not in str(raised.value)
    assert not are_progress_bars_disabled()  # silenced for the call only


# --- bad input ----------------------------------------------------------------------------------------


def good_lines() -> list[str]:
    return [json.dumps(r) for r in RECORDS]


def test_malformed_lines_are_named_by_line_number(tmp_path: Path) -> None:
    lines = good_lines()
    lines[1:1] = ['{"user_id": "U9", broken', "", "[1, 2]"]  # lines 2 and 4 are bad, line 3 is blank
    message = import_error(tmp_path, lines)
    assert "2 malformed JSON line(s): line 2 (" in message and "line 4 (not a JSON object)" in message
    assert "--skip-bad" in message


def test_skip_bad_drops_and_counts_bad_lines(tmp_path: Path) -> None:
    lines = good_lines()
    lines[1:1] = ['{"user_id": "U9", broken', "", json.dumps({**RECORDS[0], "timestamp": "yesterday"})]
    source = write_lines(tmp_path / "Books.jsonl.gz", lines)
    result = import_file(source, "Books", tmp_path / "Books.parquet", skip_bad=True)
    assert (result.rows, result.skipped) == (4, 2)
    assert_frame_equal(pl.read_parquet(tmp_path / "Books.parquet"), expected("Books"))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"timestamp": "2020-01-01"}, "line 3: timestamp '2020-01-01' is not an integer"),
        ({"timestamp": 1.6e12 + 0.5}, "line 3: timestamp '1600000000000.5' is not an integer"),
        ({"rating": "good"}, "line 3: rating 'good' is not a number"),
        ({"rating": True}, "line 3: rating 'true' is not a number"),
        ({"user_id": None}, "line 3: missing user_id"),
        ({"parent_asin": ""}, "line 3: missing parent_asin"),
    ],
)
def test_wrong_types_are_named_by_line_number(tmp_path: Path, change: dict, problem: str) -> None:
    lines = good_lines()
    lines[1] = ""  # a blank line: Polars skips it, the line numbers must not
    lines.insert(2, json.dumps({**RECORDS[0], **change}))
    message = import_error(tmp_path, lines)
    assert f"1 bad row(s): {problem}; fix them or rerun with --skip-bad" in message


def test_only_the_first_bad_lines_are_listed(tmp_path: Path) -> None:
    lines = [json.dumps({**RECORDS[0], "timestamp": "x"})] * 8
    message = import_error(tmp_path, lines)
    assert "8 bad row(s): line 1:" in message and "line 5:" in message and "line 6:" not in message
    assert "(and 3 more)" in message


def test_a_field_missing_everywhere_is_reported(tmp_path: Path) -> None:
    lines = [json.dumps({"user_id": "u", "rating": 1, "timestamp": 1}) for _ in range(3)]
    assert "line 1: missing parent_asin" in import_error(tmp_path, lines)
    source = write_lines(tmp_path / "all_bad.jsonl", lines)
    with pytest.raises(XdrecError, match="all 3 rows are bad"):
        import_file(source, "Books", tmp_path / "Books.parquet", skip_bad=True)


def test_missing_columns_in_csv_and_parquet_are_named(tmp_path: Path) -> None:
    amazon_frame().drop("timestamp").write_csv(tmp_path / "Books.csv")
    expected("x").drop("user").write_parquet(tmp_path / "Books.parquet")  # raw naming
    for name, column in (("Books.csv", "timestamp"), ("Books.parquet", "user")):
        with pytest.raises(XdrecError, match=f"{name}: missing column\\(s\\) {column}; expected"):
            import_file(tmp_path / name, "Books", tmp_path / "out.parquet")


def test_wrong_types_in_csv_and_parquet_are_located(tmp_path: Path) -> None:
    write_lines(tmp_path / "Books.csv", ["user_id,parent_asin,rating,timestamp", "u,i,5,1", "u,i,five,2"])
    with pytest.raises(XdrecError, match="line 3: rating 'five' is not a number"):
        import_file(tmp_path / "Books.csv", "Books", tmp_path / "out.parquet")
    text_times = expected("x").with_columns(
        pl.col("timestamp").cast(pl.String).replace("1381536000000", "soon")
    )
    text_times.write_parquet(tmp_path / "Books.parquet")
    with pytest.raises(XdrecError, match="row 4: timestamp 'soon' is not an integer"):
        import_file(tmp_path / "Books.parquet", "Books", tmp_path / "out.parquet")
    expected("x").with_columns(timestamp=pl.lit([1])).write_parquet(tmp_path / "Books.parquet")
    with pytest.raises(
        XdrecError, match=r"column timestamp is List\(Int64\), expected integer Unix milliseconds"
    ):
        import_file(tmp_path / "Books.parquet", "Books", tmp_path / "out.parquet")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("Books.jsonl", b"", "is empty: there is nothing to import"),
        ("Books.jsonl", b"\n\n", "holds no interactions"),
        (
            "Books.jsonl.gz",
            gzip.compress(b'{"user_id": "u"}\n' * 50, mtime=0)[:30],
            "if it was downloaded, delete it",
        ),
        ("Books.txt", b"x", "unsupported file type; use one of .parquet"),
        ("Books.parquet", b"not parquet", "cannot read Books.parquet"),
    ],
)
def test_unreadable_files_are_one_clear_line(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(XdrecError, match=match) as error:
        import_file(tmp_path / name, "Books", tmp_path / "out.parquet")
    assert "\n" not in str(error.value)


def test_a_missing_source_is_one_clear_line(tmp_path: Path, ws: Workspace) -> None:
    with pytest.raises(XdrecError, match="does not exist"):
        fetch(ws, ["Books"], str(tmp_path / "nowhere.jsonl"), progress=False)
    with pytest.raises(XdrecError, match=r"cannot read .*No such file"):
        import_file(tmp_path / "nowhere.jsonl", "Books", tmp_path / "out.parquet")


def test_a_failed_import_leaves_the_earlier_file_byte_identical(tmp_path: Path, ws: Workspace) -> None:
    fetch(ws, ["Books"], str(write_jsonl(tmp_path / "good.jsonl")), progress=False)
    before = ws.raw("Books").read_bytes()
    bad = write_lines(tmp_path / "bad.jsonl", [*good_lines(), "{oops"])
    with pytest.raises(XdrecError, match="line 5"):
        fetch(ws, ["Books"], str(bad), progress=False)
    assert ws.raw("Books").read_bytes() == before
    assert sorted(p.name for p in ws.raw_dir.iterdir()) == ["Books.parquet"]  # no temporary files left


def test_as_dict_is_json_ready(tmp_path: Path) -> None:
    result = import_file(write_jsonl(tmp_path / "Books.jsonl"), "Books", tmp_path / "Books.parquet")
    assert json.loads(json.dumps(result.as_dict()))["path"] == str(tmp_path / "Books.parquet")


# --- real data and memory -----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_grocery_file_matches_its_readme(tmp_path: Path, ws: Workspace) -> None:
    source = FOOD_KITCHEN / "Grocery_and_Gourmet_Food.jsonl.gz"
    if not source.exists():
        pytest.skip(f"{source} not present")
    [result] = fetch(ws, ["Grocery_and_Gourmet_Food"], str(FOOD_KITCHEN), progress=False)
    assert (result.rows, result.users, result.items, result.skipped) == (83_663, 7_144, 11_837, 0)
    assert read_raw(ws, "Grocery_and_Gourmet_Food")["rating"].null_count() == 83_663


def write_big_jsonl(path: Path, lines: int) -> None:
    """~4 KB of review text per line, as in real review dumps."""
    body = json.dumps({"title": "t", "text": TEXT * 2, "images": [], "helpful_vote": 0})[1:-1]
    with path.open("w") as f:
        for i in range(lines):
            f.write(f'{{"rating": 4.0, {body}, "parent_asin": "P{i % 9000}", "user_id": "U{i % 7000}", ')
            f.write(f'"timestamp": {1_600_000_000_000 + i}}}\n')


def peak_anon_rss_kb(command: list[str]) -> tuple[int, int]:
    """Run `command`, polling its anonymous resident memory (file-backed mmap pages excluded)."""
    proc = subprocess.Popen(
        command,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")])),
        },
        cwd=Path(__file__).parents[1],
    )
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(
                peak, next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("RssAnon"))
            )
        except (OSError, StopIteration):
            pass
        time.sleep(0.01)
    return proc.returncode, peak


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_stays_bounded_on_a_large_file_with_long_text(tmp_path: Path) -> None:
    source = tmp_path / "Big.jsonl"
    write_big_jsonl(source, 60_000)
    size_mb = source.stat().st_size / 2**20
    assert size_mb > 200
    code = (
        "import sys; from pathlib import Path; from xdrec.data.amazon import import_file; "
        "r = import_file(Path(sys.argv[1]), 'Big', Path(sys.argv[2])); assert r.rows == 60000"
    )
    returncode, peak_kb = peak_anon_rss_kb(
        [sys.executable, "-c", code, str(source), str(tmp_path / "o.parquet")]
    )
    assert returncode == 0
    assert peak_kb / 1024 < size_mb / 2  # reading the file into memory would need all of it
