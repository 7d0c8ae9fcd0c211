"""`xdrec fetch`: Amazon Reviews 2023 interactions, from the hub or local files, into raw/<Domain>.parquet.

This module: the category names, the hub paths and the plan of a fetch. The URL downloader is in
download.py, the multi-format importer in importer.py.

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

See importer.py for how a file becomes raw/<Domain>.parquet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.errors import HTTPError as HubNetworkError
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from xdrec.data.download import download_url, is_url, local_path, url_cache_path, url_file_name
from xdrec.data.importer import FORMATS, FetchResult, format_of, import_file
from xdrec.errors import XdrecError, first_line
from xdrec.workspace import Workspace, check_name

__all__ = ["CATEGORIES", "FetchResult", "check_category", "fetch", "import_file", "url_cache_path"]

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
    check_name(name)


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
    source = local_path(source)  # file:// URLs are local paths; other schemes than http(s) are refused
    if is_url(source):
        return [
            (name, _Origin("url", url)) for name, url in zip(names, _source_urls(source, names), strict=True)
        ]
    paths = _source_files(Path(source).expanduser(), names)
    return [(name, _Origin("file", str(path))) for name, path in zip(names, paths, strict=True)]


def _source_urls(source: str, names: list[str]) -> list[str]:
    if source.endswith("/"):
        return [f"{source}{name}.jsonl.gz" for name in names]
    if len(names) > 1:
        raise XdrecError(
            f"--source {source} is one file, so it holds one domain, but {len(names)} were named: fetch them "
            "one at a time, or pass a URL ending in '/' to fetch <Domain>.jsonl.gz from that folder"
        )
    format_of(Path(url_file_name(source)))  # refuse an unknown format before downloading it
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
        return download_url(origin.location, workspace.cache_dir / "downloads", progress=progress)
    return Path(origin.location)


# --- the hub -----------------------------------------------------------------------------------------


def _download_hub(filename: str, cache: Path, *, progress: bool) -> Path:
    what = f"{HUB_REPO}/{filename}"
    # Offline, the hub client retries for about 24 s, logging each try: ask once first, and if the hub
    # cannot be reached, use the cached copy or say so in one line.
    offline = not _hub_answers(filename)
    try:
        with _hub_progress_bars(progress):
            local = hf_hub_download(
                HUB_REPO, filename, repo_type="dataset", cache_dir=cache, local_files_only=offline
            )
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is a subclass raised when offline
        raise XdrecError(
            f"cannot reach the Hugging Face hub to download {what} (and it is not in {cache}): check the "
            "connection, or import a local copy with --source PATH"
        ) from None
    except EntryNotFoundError:
        raise XdrecError(f"the hub has no {what}: import a local copy with --source PATH") from None
    except (HfHubHTTPError, HubNetworkError, OSError) as e:
        raise XdrecError(
            f"download of {what} failed ({first_line(e)}): run the same command again to resume, or import "
            "a local copy with --source PATH"
        ) from None
    return Path(local)


def _hub_answers(filename: str) -> bool:
    """Whether the hub answers one request for the file's metadata (any answer, an error status too:
    the download that follows words it), without the client's retries."""
    try:
        get_hf_file_metadata(hf_hub_url(HUB_REPO, filename, repo_type="dataset"), timeout=10)
    except HfHubHTTPError:
        return True
    except (HubNetworkError, OSError):  # no connection, a name that does not resolve, a timeout
        return False
    return True


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
