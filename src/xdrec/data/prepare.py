"""`xdrec prepare`: raw per-domain logs -> a prepared two-domain dataset (see data/dataset.py for the files).

Steps, Polars end to end:
1. read raw/<Source>.parquet and raw/<Target>.parquet; encode raw ids as integers (sorted order, so ids
   do not depend on file order) and keep each (user, item)'s earliest review;
2. k-core: a user needs >= min_user interactions over both domains together (keeping users thin in the
   target but rich in the source), an item >= min_item in its domain; iterate to the fixed point
   (`one_pass` applies both filters once, with counts from the unfiltered table, like the seed notebook);
3. dense ids: users 0..n-1 across domains, items 1..n per domain (0 is padding);
4. splits and the cold-start hold-out (data/splits.py); write Parquet + manifest.json atomically.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from xdrec import __version__
from xdrec.data.schema import RAW_SCHEMA, check_raw_schema
from xdrec.data.splits import BENCHMARK_T1, BENCHMARK_T2, SplitKind, assign_splits, choose_cold_users
from xdrec.errors import XdrecError
from xdrec.workspace import Workspace, atomic_path, write_json

SOURCE, TARGET = 0, 1  # domain_code values


@dataclass(frozen=True)
class PrepareConfig:
    min_user: int = 5
    min_item: int = 5
    split: SplitKind = "loo"
    cold_start: float = 0.2
    seed: int = 42
    one_pass: bool = False
    t1: int = BENCHMARK_T1
    t2: int = BENCHMARK_T2

    def check(self) -> None:
        if self.min_user < 1 or self.min_item < 1:
            raise XdrecError("--min-user and --min-item must be at least 1")
        if not 0.0 <= self.cold_start < 1.0:
            raise XdrecError(f"--cold-start must be in [0, 1), got {self.cold_start}")
        if self.split not in ("loo", "timestamp"):
            raise XdrecError(f"--split must be loo or timestamp, got {self.split!r}")
        if self.split == "timestamp" and not self.t1 < self.t2:
            raise XdrecError(f"timestamp cut points must satisfy t1 < t2, got {self.t1} and {self.t2}")


@dataclass(frozen=True)
class PrepareResult:
    name: str
    path: Path
    manifest: dict


def dataset_name(source: str, target: str) -> str:
    return f"{source}+{target}"


def prepare(
    workspace: Workspace, source: str, target: str, config: PrepareConfig = PrepareConfig()
) -> PrepareResult:
    """Prepare `source` -> `target` from the workspace's raw files and make it the current dataset."""
    config.check()
    if source == target:
        raise XdrecError(f"source and target are both {source!r}: give two different domains")
    paths = {d: workspace.raw(d) for d in (source, target)}
    for domain, path in paths.items():
        if not path.exists():
            raise XdrecError(f"no raw data for {domain} ({path}): run `xdrec fetch {domain}` first")

    tables = build_tables(
        {domain: _scan_raw(path, domain) for domain, path in paths.items()}, source, target, config
    )
    manifest = _manifest(source, target, config, paths, tables)
    name = dataset_name(source, target)
    out = workspace.dataset_dir(name)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for table, frame in tables.items():
            frame.write_parquet(tmp / f"{table}.parquet", statistics=False)
        write_json(tmp / "manifest.json", manifest)
    workspace.set_current_dataset(name)
    return PrepareResult(name, out, manifest)


def build_tables(
    raw: dict[str, pl.LazyFrame], source: str, target: str, config: PrepareConfig
) -> dict[str, pl.DataFrame]:
    """The pure part of prepare: raw frames by domain -> {interactions, users, items} frames."""
    events, users, items = _encode(raw, source, target)
    events = kcore(events, config.min_user, config.min_item, one_pass=config.one_pass)
    for code, domain in enumerate((source, target)):
        if events.filter(pl.col("domain_code") == code).height == 0:
            raise XdrecError(
                f"{domain} is empty after the {config.min_user}/{config.min_item}-core filter: "
                "lower --min-user / --min-item or use more data"
            )
    events, users, items = _densify(events, users, items, (source, target))
    cold = choose_cold_users(events, TARGET, config.cold_start, config.seed)
    events = (
        assign_splits(
            events.lazy().sort("domain_code", "user_id", "timestamp", "item_id"),
            config.split,
            target_code=TARGET,
            cold_users=cold,
            t1=config.t1,
            t2=config.t2,
        )
        .with_columns(domain=pl.col("domain_code").replace_strict([SOURCE, TARGET], [source, target]))
        .select("user_id", "domain", "item_id", "timestamp", "rating", "split")
        .collect()
    )
    users = users.with_columns(cold=pl.col("user_id").is_in(cold.implode()))
    return {"interactions": events, "users": users, "items": items}


def kcore(events: pl.DataFrame, min_user: int, min_item: int, *, one_pass: bool = False) -> pl.DataFrame:
    """Keep users with >= min_user rows (all domains) and items with >= min_item rows (their domain).

    Iterates to the fixed point where both hold; `one_pass` filters once with the original counts.
    """
    user_ok = pl.len().over("user_code") >= min_user
    item_ok = pl.len().over("domain_code", "item_code") >= min_item
    if one_pass:
        return events.filter(user_ok & item_ok)
    while True:
        before = events.height
        events = events.filter(user_ok).filter(item_ok)
        if events.height == before:
            return events


def _scan_raw(path: Path, domain: str) -> pl.LazyFrame:
    try:
        frame = pl.scan_parquet(path)
        schema = frame.collect_schema()
    except (OSError, pl.exceptions.PolarsError) as e:
        raise XdrecError(f"cannot read {path}: {e}; re-run `xdrec fetch {domain}`") from None
    check_raw_schema(schema, str(path))
    return frame.select(list(RAW_SCHEMA))


def _encode(
    raw: dict[str, pl.LazyFrame], source: str, target: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Integer-coded events, one per (domain, user, item), and the code -> raw id tables.

    Codes are ranks in sorted order of the distinct raw ids (so they never depend on file order). The
    vocabularies are built from the distinct ids and joined back, and duplicates are dropped on integer
    keys: the strings are sorted once per distinct id and hashed once per row, never grouped per row.
    A repeated (user, item) review keeps its earliest timestamp and that review's rating, as the Amazon
    2023 benchmark does.
    """
    frames = [
        raw[domain].drop("domain").with_columns(domain_code=pl.lit(code, dtype=pl.UInt8))
        for code, domain in enumerate((source, target))
    ]
    rows = pl.concat(frames).drop_nulls(["user", "item", "timestamp"])
    users_q = rows.select(pl.col("user").unique()).sort("user").with_row_index("user_code")
    items_q = (
        rows.select("domain_code", "item")
        .unique()
        .sort("domain_code", "item")
        .with_columns(item_code=pl.int_range(pl.len(), dtype=pl.UInt32).over("domain_code"))
    )
    users, items = pl.collect_all([users_q, items_q], engine="streaming")
    events = (
        rows.join(users.lazy(), on="user")
        .join(items.lazy(), on=["domain_code", "item"])
        .group_by("domain_code", "user_code", "item_code")
        .agg(pl.col("rating").sort_by("timestamp").first(), pl.col("timestamp").min())
        .collect(engine="streaming")
    )
    return events, users, items


def _densify(
    events: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame, domains: tuple[str, str]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Renumber the survivors: users 0..n-1, items 1..n per domain, both in raw-id sorted order."""
    events = events.with_columns(
        user_id=(pl.col("user_code").rank("dense") - 1).cast(pl.Int32),
        item_id=pl.col("item_code").rank("dense").over("domain_code").cast(pl.Int32),
    )
    user_table = (
        events.select("user_code", "user_id")
        .unique("user_code")
        .join(users, on="user_code")
        .select("user_id", "user")
        .sort("user_id")
    )
    item_table = (
        events.select("domain_code", "item_code", "item_id")
        .unique(["domain_code", "item_code"])
        .join(items, on=["domain_code", "item_code"])
        .with_columns(domain=pl.col("domain_code").replace_strict([SOURCE, TARGET], list(domains)))
        .sort("domain_code", "item_id")
        .select("domain", "item_id", "item")
    )
    return events.drop("user_code", "item_code"), user_table, item_table


def _manifest(
    source: str, target: str, config: PrepareConfig, paths: dict[str, Path], tables: dict[str, pl.DataFrame]
) -> dict:
    events = tables["interactions"]
    per_domain = {}
    for domain in (source, target):
        rows = events.filter(pl.col("domain") == domain)
        splits = rows.group_by("split").len()
        per_domain[domain] = {
            "users": rows["user_id"].n_unique(),
            "items": tables["items"].filter(pl.col("domain") == domain).height,
            "interactions": rows.height,
            "splits": {s: int(n) for s, n in splits.iter_rows()},
        }
    both = events.group_by("user_id").agg(pl.col("domain").n_unique()).filter(pl.col("domain") == 2).height
    return {
        "xdrec_version": __version__,
        "format": 1,
        "source": source,
        "target": target,
        "parameters": asdict(config),
        "inputs": {d: {"file": p.name, "sha256": file_sha256(p)} for d, p in paths.items()},
        "users": tables["users"].height,
        "overlap_users": both,
        "cold_users": int(tables["users"]["cold"].sum()),
        "domains": per_domain,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
