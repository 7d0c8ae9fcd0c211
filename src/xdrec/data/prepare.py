"""`xdrec prepare`: raw per-domain logs -> a prepared two-domain dataset (see data/dataset.py for the files).

Steps, Polars end to end:
1. read raw/<Source>.parquet and raw/<Target>.parquet with user and item ids as 64-bit hashes (no string
   is kept, grouped or sorted per row) and each row's position, and keep each (user, item)'s earliest
   review; timestamps and ratings are read back by position later, for the surviving rows only (and
   for the repeated pairs here), so the rows of the whole input stay narrow;
2. k-core: a user needs >= min_user interactions over both domains together (keeping users thin in the
   target but rich in the source), an item >= min_item in its domain; iterate to the fixed point
   (`one_pass` applies both filters once, with counts from the unfiltered table, like the seed notebook).
   With `min_per_domain` N a user also needs >= N interactions in each domain (how the papers' releases
   were made: users of both domains only); `--split mixed` implies N >= 1, since its protocol is defined
   on the merged timeline of users active in both domains;
3. dense ids: read back the raw strings of the surviving ids only (one row each) and rank them: users
   0..n-1 across domains, items 1..n per domain (0 is padding), both in sorted raw-id order, so ids do
   not depend on file order; a hash collision among them is detected and reported;
4. splits and the cold-start hold-out (data/splits.py); write Parquet + manifest.json atomically.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from xdrec import __version__
from xdrec.data.schema import RAW_SCHEMA, check_raw_schema
from xdrec.data.splits import (
    BENCHMARK_T1,
    BENCHMARK_T2,
    SPLIT_KINDS,
    SPLIT_NAMES,
    SplitKind,
    assign_splits,
    choose_cold_users,
    split_label,
)
from xdrec.errors import OptionError, XdrecError
from xdrec.workspace import Workspace, atomic_path, file_sha256, write_json

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
    min_per_domain: int = 0  # a user needs this many interactions in each domain (0: no such filter)

    def check(self) -> None:
        if self.min_user < 1 or self.min_item < 1:
            raise OptionError("--min-user and --min-item must be at least 1")
        if self.min_per_domain < 0:
            raise OptionError(f"--min-per-domain must be 0 or more, got {self.min_per_domain}")
        if not 0.0 <= self.cold_start < 1.0:  # also refuses nan
            raise OptionError(f"--cold-start must be in [0, 1), got {self.cold_start}")
        if self.split not in SPLIT_KINDS:
            raise OptionError(f"--split must be one of {', '.join(SPLIT_KINDS)}, got {self.split!r}")
        if self.split == "timestamp" and not self.t1 < self.t2:
            raise OptionError(f"timestamp cut points must satisfy t1 < t2, got {self.t1} and {self.t2}")

    @property
    def per_domain(self) -> int:
        """The interactions a user needs in each domain: `min_per_domain`, at least 1 under `mixed`."""
        return max(self.min_per_domain, 1 if self.split == "mixed" else 0)

    def parameters(self) -> dict:
        """The manifest's `parameters`: every field, `min_per_domain` only when set, so a dataset prepared
        before that option existed keeps its manifest (and the models trained on it stay valid)."""
        out = asdict(self)
        if not self.min_per_domain:
            del out["min_per_domain"]
        return out


PREPARE_FIELDS = tuple(PrepareConfig.__dataclass_fields__)


@dataclass(frozen=True)
class PrepareResult:
    name: str
    path: Path
    manifest: dict
    notes: tuple[str, ...] = ()  # what the filters dropped, for the user to read


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

    with ThreadPoolExecutor(1) as pool:  # hash the inputs while Polars works (hashlib drops the GIL)
        digests = {domain: pool.submit(file_sha256, path) for domain, path in paths.items()}
        interactions, users, items, counts = _build(
            {domain: _scan_raw(path, domain) for domain, path in paths.items()}, source, target, config
        )
        inputs = {d: {"file": p.name, "sha256": digests[d].result()} for d, p in paths.items()}
    manifest = _manifest(source, target, config, inputs, counts)
    name = dataset_name(source, target)
    out = workspace.dataset_dir(name)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        # The interactions are labelled as they are written, so their string columns are never all in memory.
        interactions.sink_parquet(tmp / "interactions.parquet", **_PARQUET)
        users.write_parquet(tmp / "users.parquet", **_PARQUET)
        items.write_parquet(tmp / "items.parquet", **_PARQUET)
        write_json(tmp / "manifest.json", manifest)
    workspace.set_current_dataset(name)
    return PrepareResult(name, out, manifest, counts["notes"])


def build_tables(
    raw: dict[str, pl.LazyFrame], source: str, target: str, config: PrepareConfig
) -> dict[str, pl.DataFrame]:
    """The pure part of prepare: raw frames by domain -> {interactions, users, items} frames."""
    interactions, users, items, _ = _build(raw, source, target, config)
    return {"interactions": interactions.collect(), "users": users, "items": items}


_PARQUET = {"statistics": False, "compression_level": 1}  # zstd, as by default, but at its fastest level


def _build(
    raw: dict[str, pl.LazyFrame], source: str, target: str, config: PrepareConfig
) -> tuple[pl.LazyFrame, pl.DataFrame, pl.DataFrame, dict]:
    """build_tables, with the interactions still lazy (their labels are added as they are written), and
    the manifest's counts (taken on integer columns, before ids become strings)."""
    domains = (source, target)
    events = _dedup(raw, domains, _scan_keys(raw, domains))
    before = _user_counts(events) if config.per_domain else None
    events = kcore(
        events, config.min_user, config.min_item, one_pass=config.one_pass, min_per_domain=config.per_domain
    )
    present = events["domain_code"].unique().to_list()
    after = _user_counts(events) if before is not None else None
    notes = (_dropped_note(before, after, config),) if before and after and after[1] < before[1] else ()
    for code, domain in enumerate(domains):
        if code not in present:
            if before and after:
                raise XdrecError(
                    f"{_dropped_note(before, after, config)}: nothing is left; "
                    "lower --min-per-domain / --min-user / --min-item or use other data"
                )
            raise XdrecError(
                f"{domain} is empty after the {config.min_user}/{config.min_item}-core filter: "
                "lower --min-user / --min-item or use more data"
            )
    users, items = _vocabularies(raw, domains, events)
    # Codes -> dense ids, then the surviving rows' timestamps and ratings (read only now: until the strings
    # have been read, the rows are kept narrow).
    kept = events.height
    events = (
        events.lazy()
        .select("domain_code", "pos", "user_code", "item_code")
        .join(users.lazy().select("user_code", "user_id"), on="user_code")
        .join(items.lazy().select("item_code", "item_id"), on="item_code")
        .select("domain_code", "pos", "user_id", "item_id")
        .collect()
    )
    if events.height != kept:  # an id without a vocabulary entry: two (hash, check) pairs coincided
        raise XdrecError(_COLLISION.format(kind="user or item"))
    events = _fetch(raw, domains, events, ["timestamp", "rating"]).select(
        "domain_code", "user_id", "item_id", "timestamp", "rating"
    )
    events = _in_runs(events, users.height)
    # One row per (domain, user) run: the users of each domain, in user_id order.
    runs = events.filter(_run_key.ne_missing(_run_key.shift(-1))).select("domain_code", "user_id")
    domain_users = [runs.filter(pl.col("domain_code") == code)["user_id"] for code in (SOURCE, TARGET)]
    both = domain_users[SOURCE].filter(domain_users[SOURCE].is_in(domain_users[TARGET].implode()))
    cold = choose_cold_users(both, config.cold_start, config.seed)
    events = assign_splits(
        events.lazy(),
        config.split,
        target_code=TARGET,
        cold_users=cold,
        t1=config.t1,
        t2=config.t2,
    ).collect()
    counts = _counts(events, items, domains, [u.len() for u in domain_users])
    counts |= {"users": users.height, "overlap_users": both.len(), "cold_users": cold.len(), "notes": notes}
    # when/then, unlike replace_strict, labels row by row as they are written (not a whole column at once)
    domain_name = pl.when(pl.col("domain_code") == SOURCE).then(pl.lit(source)).otherwise(pl.lit(target))
    interactions = events.lazy().select(
        "user_id", domain_name.alias("domain"), "item_id", "timestamp", "rating", split_label()
    )
    users = users.select("user_id", "user", cold=pl.col("user_id").is_in(cold.implode()))
    items = items.select(domain_name.alias("domain"), "item_id", "item")
    return interactions, users, items, counts


# (domain, user) as one sort key: sorting on it equals sorting on both, and is several times faster.
_run_key = pl.col("domain_code").cast(pl.UInt32) * (1 << 31) + pl.col("user_id").cast(pl.UInt32)


def _in_runs(events: pl.DataFrame, n_users: int) -> pl.DataFrame:
    """`events` sorted by (domain, user, timestamp, item_id): a run of rows per (domain, user), by time.

    Where the dense (domain, user) number and the timestamp's offset from the earliest fit in 64 bits
    together (they do for real logs: 40 bits of milliseconds are 35 years, which leaves room for 8M
    users), they are packed into one integer key, which sorts about twice as fast as the three keys.
    """
    first, last = events.select(first=pl.col("timestamp").min(), last=pl.col("timestamp").max()).row(0)
    time_bits = (last - first).bit_length()
    if (2 * n_users).bit_length() + time_bits > 64:
        return events.sort(_run_key, "timestamp", "item_id")
    run = pl.col("domain_code").cast(pl.UInt64) * n_users + pl.col("user_id").cast(pl.UInt64)
    return events.sort(run * (1 << time_bits) + (pl.col("timestamp") - first).cast(pl.UInt64), "item_id")


def kcore(
    events: pl.DataFrame, min_user: int, min_item: int, *, one_pass: bool = False, min_per_domain: int = 0
) -> pl.DataFrame:
    """Keep users with >= min_user rows (`user_code`, all domains) and >= min_per_domain rows in each of
    the two domains (`domain_code` 0 and 1), and items with >= min_item rows (`item_code`, which names one
    item of one domain).

    Iterates to the fixed point where both hold; `one_pass` filters once with the original counts.
    """
    user_ok = pl.len().over("user_code") >= min_user
    if min_per_domain:
        for code in (SOURCE, TARGET):
            user_ok &= (pl.col("domain_code") == code).sum().over("user_code") >= min_per_domain
    item_ok = pl.len().over("item_code") >= min_item
    # Both filters with the full table's counts (one mask at a time, so that only one grouping is in
    # memory at once): the one-pass result. A row it drops fails on any subset too, so is not in the
    # fixed point either, and the iteration can start from its (much smaller) result.
    keep = _mask(events, user_ok)
    keep &= _mask(events, item_ok)
    events = events.filter(keep)
    if one_pass:
        return events
    # Alternate the two filters; once one removes nothing after the other has run, both hold.
    keep = _mask(events, user_ok)
    if not keep.all():
        events = events.filter(keep)
    filters, step = (item_ok, user_ok), 0
    while True:
        keep = _mask(events, filters[step % 2])
        if keep.all():
            return events
        events = events.filter(keep)
        step += 1


def _user_counts(events: pl.DataFrame) -> tuple[int, int, int, int]:
    """(users, interactions, users active in one domain only, their interactions) of coded `events`."""
    domains = events.group_by("user_code").agg(n=pl.len(), domains=pl.col("domain_code").n_unique())
    single = domains.filter(pl.col("domains") == 1)
    return domains.height, events.height, single.height, int(single["n"].sum())


def _dropped_note(
    before: tuple[int, int, int, int], after: tuple[int, int, int, int], config: PrepareConfig
) -> str:
    """What the users-of-both-domains filter kept and dropped, in one line."""
    (users, rows, single, single_rows), (kept, kept_rows) = before, after[:2]
    why = "--split mixed" if config.split == "mixed" and not config.min_per_domain else "--min-per-domain"
    return (
        f"{why} keeps users with at least {config.per_domain} interaction(s) in each domain "
        f"(and the {config.min_user}/{config.min_item}-core): kept {kept:,} of {users:,} users "
        f"({kept_rows:,} of {rows:,} interactions); {single:,} users ({single_rows:,} interactions) "
        "were active in one domain only"
    )


def _mask(events: pl.DataFrame, predicate: pl.Expr) -> pl.Series:
    """`predicate` on `events`, by the streaming engine (faster than eager for window counts)."""
    return events.lazy().select(predicate).collect(engine="streaming").to_series()


def _scan_raw(path: Path, domain: str) -> pl.LazyFrame:
    try:
        frame = pl.scan_parquet(path, glob=False)
        schema = frame.collect_schema()
    except (OSError, pl.exceptions.PolarsError) as e:
        raise XdrecError(f"cannot read {path}: {e}; re-run `xdrec fetch {domain}`") from None
    check_raw_schema(schema, str(path))
    return frame.select(list(RAW_SCHEMA))


# Raw ids are handled as 64-bit hashes until the survivors are known; only then are their strings read
# back (one row per surviving id) and sorted into the dense ids. Item hashes are seeded per domain, so
# one item code names one (domain, item). `*_check` is a second, independent 16-bit hash of the same id:
# two ids that share a 64-bit hash almost surely differ in it, which _vocabularies detects.
_USER_SEED, _USER_CHECK_SEED = 0x9E3779B1, 0x85EBCA77
_ITEM_SEEDS, _ITEM_CHECK_SEED = (0xC2B2AE3D, 0x27D4EB2F), 0x165667B1
_PAIR_SEED = 0xD3A2646C
_COLLISION = (
    "two different raw {kind} ids share a 64-bit hash (very unlikely; an xdrec bug?): "
    "please report this with your input files"
)


def _id_hash(column: str, seed: int) -> pl.Expr:
    return pl.col(column).hash(seed)


def _check_hash(column: str, seed: int) -> pl.Expr:
    return (pl.col(column).hash(seed) % (1 << 16)).cast(pl.UInt16)


def _scan_keys(raw: dict[str, pl.LazyFrame], domains: tuple[str, str]) -> pl.DataFrame:
    """One row per raw review with ids as hashes; `pos` is the row's position in its domain's file."""
    frames = [
        raw[domain]
        .with_row_index("pos")
        .drop_nulls(["user", "item", "timestamp"])
        .select(
            pl.lit(code, dtype=pl.UInt8).alias("domain_code"),
            _id_hash("user", _USER_SEED).alias("user_code"),
            _id_hash("item", _ITEM_SEEDS[code]).alias("item_code"),
            "pos",
            _check_hash("user", _USER_CHECK_SEED).alias("user_check"),
            _check_hash("item", _ITEM_CHECK_SEED).alias("item_check"),
        )
        for code, domain in enumerate(domains)
    ]
    return pl.concat(frames).collect(engine="streaming")


def _fetch(
    raw: dict[str, pl.LazyFrame], domains: tuple[str, str], rows: pl.DataFrame, columns: list[str]
) -> pl.DataFrame:
    """`rows` with `columns` of the raw rows at their (domain_code, pos) added; in domain order."""
    parts = []
    for code, domain in enumerate(domains):
        part = rows.filter(pl.col("domain_code") == code)
        values = raw[domain].select(columns).collect()  # numbers only: cheaper than a filtered scan
        if part.height and part["pos"].max() >= values.height:
            raise XdrecError("a raw file changed while it was being read: run prepare again")
        parts.append(part.hstack(values[part["pos"]]))
        del values
    return pl.concat(parts)


def _dedup(raw: dict[str, pl.LazyFrame], domains: tuple[str, str], events: pl.DataFrame) -> pl.DataFrame:
    """Keep each (domain, user, item)'s earliest review, with that review's rating.

    Reviews tied on the earliest timestamp keep the lowest rating (a missing rating last), so the
    result never depends on file order. Only the rows whose (user, item) key repeats are sorted; their
    timestamps and ratings are read back for them alone.
    """
    pair = pl.col("user_code").hash(_PAIR_SEED).xor(pl.col("item_code"))
    # Repeated pairs are found per domain (a repeat never spans domains), on sorted pair hashes: less
    # memory than a hash set over every row, and the repeated values come out of the same pass.
    repeated = pl.concat(
        [
            part.lazy()
            .select(pair.sort().alias("pair"))
            .filter(pl.col("pair") == pl.col("pair").shift(1))
            .unique()
            .collect(engine="streaming")
            for part in _domain_parts(events)
        ]
    )["pair"]
    if repeated.is_empty():
        return events
    rows = (
        events.lazy().with_row_index("row").filter(pair.is_in(repeated.implode())).collect(engine="streaming")
    )
    key = ("domain_code", "user_code", "item_code")
    same_key_as_previous = pl.all_horizontal(pl.col(k) == pl.col(k).shift(1) for k in key)
    losers = (
        _fetch(raw, domains, rows, ["timestamp", "rating"])
        .sort(*key, "timestamp", "rating", "pos", nulls_last=True)
        .filter(same_key_as_previous)["row"]
    )
    return events.filter(pl.repeat(True, events.height, eager=True).scatter(losers, False))


def _domain_parts(events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The source rows and the target rows of `events`, as zero-copy slices (its rows are in domain order)."""
    n_source = events["domain_code"].search_sorted(TARGET)
    return events.slice(0, n_source), events.slice(n_source)


def _vocabularies(
    raw: dict[str, pl.LazyFrame], domains: tuple[str, str], events: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The surviving users (user_code, user_id, user) and items (domain_code, item_code, item_id, item).

    Ids are ranks in sorted raw-id order (users over both domains, items per domain, from 1), so they
    do not depend on file order. The strings come from another read that keeps one row per surviving
    id. Raises if two different surviving ids share a 64-bit hash: that is caught unless their
    independent 16-bit check hashes agree too (one chance in 65,536, for a collision whose own chance
    is about n^2 / 2^65 for n distinct ids: 6e-8 for 1.5M ids, 4e-6 for 12M, so about 1e-10 is left).
    A collision between ids that were all filtered out is not looked for: it is as unlikely, and at most
    could have changed the filtering around those ids.
    """
    vocab = {}
    for kind in ("user", "item"):
        code, check = events[f"{kind}_code"], events[f"{kind}_check"]
        first = (code ^ check.cast(pl.UInt64)).arg_unique()  # a row per (hash, check hash) pair
        vocab[kind] = events[first].select(f"{kind}_code", "domain_code", "pos")
        if vocab[kind][f"{kind}_code"].n_unique() != first.len():
            raise XdrecError(_COLLISION.format(kind=kind))
    wanted = pl.concat(
        [vocab["user"].select("domain_code", "pos"), vocab["item"].select("domain_code", "pos")]
    )
    where = (pl.col("domain_code").cast(pl.UInt64) * (1 << 32) + pl.col("pos").cast(pl.UInt64)).alias("where")
    strings = (
        pl.concat(
            [
                raw[domain]
                .with_row_index("pos")
                .filter(
                    pl.col("pos").is_in(
                        wanted.filter(pl.col("domain_code") == code)["pos"].unique().implode()
                    )
                )
                .select(pl.lit(code, dtype=pl.UInt8).alias("domain_code"), "pos", _own("user"), _own("item"))
                for code, domain in enumerate(domains)
            ]
        )
        .collect(engine="streaming")
        .select(where, "user", "item")
    )
    if not strings["where"].is_sorted():  # file order, as read
        strings = strings.sort("where")

    def strings_of(kind: str) -> pl.DataFrame:  # a search in the sorted rows: far cheaper than a join
        rows = vocab[kind].select(f"{kind}_code", "domain_code", where).sort("where")
        found = strings["where"].search_sorted(rows["where"])
        if not (strings["where"].gather(found) == rows["where"]).all():
            raise XdrecError("a raw file changed while it was being read: run prepare again")
        return rows.with_columns(strings[kind].gather(found))

    users = (
        strings_of("user")
        .sort(_byte_prefix("user"), "user")
        .select(pl.int_range(pl.len(), dtype=pl.Int32).alias("user_id"), "user_code", "user")
    )
    items = (
        strings_of("item")
        .sort(_byte_prefix("item", high_byte=pl.col("domain_code")), "item")
        .select(
            "domain_code",
            "item_code",
            (pl.int_range(pl.len(), dtype=pl.Int32).over("domain_code") + 1).alias("item_id"),
            "item",
        )
    )
    return users, items


def _own(column: str) -> pl.Expr:
    """`column`'s strings in buffers of their own: the rows a filter keeps would otherwise hold on to
    the whole decoded column they came from (a string is a view into a shared buffer)."""
    return (pl.col(column) + pl.lit("")).alias(column)


def _byte_prefix(column: str, high_byte: pl.Expr | None = None) -> pl.Expr:
    """A string's first 8 bytes (NUL-padded) as a big-endian u64; with `high_byte`, that byte then 7.

    Sorting by it and then by the string is sorting by (high_byte and) the string, several times faster:
    most ties are settled by the number, so few strings are compared.
    """
    padded = pl.concat_str([pl.col(column), pl.lit("\0" * 8)]).cast(pl.Binary)
    prefix = padded.bin.head(8).bin.reinterpret(dtype=pl.UInt64, endianness="big")
    if high_byte is None:
        return prefix
    return high_byte.cast(pl.UInt64) * (1 << 56) + prefix // (1 << 8)


def _counts(events: pl.DataFrame, items: pl.DataFrame, domains: tuple[str, str], n_users: list[int]) -> dict:
    """The manifest's per-domain counts, from the integer-coded interactions (`split_code`) and items."""
    rows = events.group_by("domain_code", "split_code").len()
    n_items = items.group_by("domain_code").len()
    per_domain = {}
    for code, domain in enumerate(domains):
        splits = rows.filter(pl.col("domain_code") == code)
        per_domain[domain] = {
            "users": n_users[code],
            "items": int(n_items.filter(pl.col("domain_code") == code)["len"].sum()),
            "interactions": int(splits["len"].sum()),
            "splits": {SPLIT_NAMES[s]: int(n) for s, n in splits.select("split_code", "len").iter_rows()},
        }
    return {"domains": per_domain}


def _manifest(source: str, target: str, config: PrepareConfig, inputs: dict, counts: dict) -> dict:
    return {
        "xdrec_version": __version__,
        "format": 1,
        "source": source,
        "target": target,
        "parameters": config.parameters(),
        "inputs": inputs,
        "users": counts["users"],
        "overlap_users": counts["overlap_users"],
        "cold_users": counts["cold_users"],
        "domains": counts["domains"],
    }
