"""prepare: k-core against a brute-force fixed point, split invariants, determinism, id round trip."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import FOOD, KITCHEN, random_raw
from xdrec.data.dataset import Dataset
from xdrec.data.prepare import PrepareConfig, build_tables, kcore, prepare
from xdrec.errors import XdrecError
from xdrec.workspace import Workspace


def brute_force_kcore(
    rows: list[tuple[int, int, int]], min_user: int, min_item: int, min_per_domain: int = 0
) -> set[tuple[int, int, int]]:
    """Remove every violating row at once until nothing changes: the textbook fixed point.

    Rows are (domain 0/1, user, item); `min_per_domain` asks for that many rows of a user in each domain.
    """
    kept, changed = set(rows), True
    while changed:
        users = Counter(u for _, u, _ in kept)
        per_domain = Counter((d, u) for d, u, _ in kept)
        items = Counter((d, i) for d, _, i in kept)
        bad = {
            r
            for r in kept
            if users[r[1]] < min_user
            or min(per_domain[(0, r[1])], per_domain[(1, r[1])]) < min_per_domain
            or items[(r[0], r[2])] < min_item
        }
        kept -= bad
        changed = bool(bad)
    return kept


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("min_user", "min_item", "min_per_domain"), [(4, 3, 0), (4, 2, 3)])
def test_kcore_matches_brute_force_fixed_point(
    seed: int, min_user: int, min_item: int, min_per_domain: int
) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    domain = rng.integers(0, 2, n).astype(np.uint8)
    events = pl.DataFrame(
        {
            "domain_code": domain,
            "user_code": (rng.zipf(1.5, n) % 200).astype(np.uint32),
            # an item code names one item of one domain, as prepare's seeded item hashes do
            "item_code": (domain.astype(np.uint32) * 1000 + rng.zipf(1.3, n) % 150).astype(np.uint32),
        }
    ).unique()
    rows = [tuple(r) for r in events.iter_rows()]
    expected = brute_force_kcore(rows, min_user, min_item, min_per_domain)
    got = kcore(events, min_user, min_item, min_per_domain=min_per_domain)
    assert {tuple(r) for r in got.iter_rows()} == expected
    assert got.height > 0  # the fixture is not trivially emptied


def test_one_pass_filters_once_with_original_counts() -> None:
    events = pl.DataFrame(
        {"domain_code": [0] * 5, "user_code": [1, 1, 2, 2, 2], "item_code": [1, 2, 1, 1, 3]},
        schema={"domain_code": pl.UInt8, "user_code": pl.UInt32, "item_code": pl.UInt32},
    )
    one = kcore(events, 2, 2, one_pass=True)  # item 2 and item 3 go, user 1 is left with one row
    assert one.height == 3
    assert kcore(events, 2, 2).height == 2  # the fixed point also drops user 1


def test_prepare_splits_and_cold_start_invariants(small_workspace: Workspace) -> None:
    result = prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_user=5, min_item=3, cold_start=0.3))
    ds = Dataset.load(result.path)
    events = ds.interactions().collect()
    # ids: users 0..n-1 dense, items 1..n dense per domain
    assert sorted(events["user_id"].unique().to_list()) == list(range(ds.users.height))
    for domain in ds.domains:
        ids = events.filter(pl.col("domain") == domain)["item_id"].unique().sort().to_list()
        assert ids == list(range(1, ds.n_items(domain) + 1))
    # no duplicates; one test and one valid item per user-domain with >= 3 rows; test is the latest
    assert events.select("user_id", "domain", "item_id").is_unique().all()
    cold = set(ds.users.filter("cold")["user_id"].to_list())
    assert len(cold) == round(0.3 * result.manifest["overlap_users"]) > 0
    warm = events.filter(~pl.col("user_id").is_in(list(cold)) | (pl.col("domain") == "Src"))
    per_user = warm.group_by("user_id", "domain").agg(
        n=pl.len(),
        n_test=(pl.col("split") == "test").sum(),
        n_valid=(pl.col("split") == "valid").sum(),
        last_is_test=pl.col("split").last() == "test",
    )
    long = per_user.filter(pl.col("n") >= 3)
    assert (long["n_test"] == 1).all() and (long["n_valid"] == 1).all() and long["last_is_test"].all()
    assert (per_user.filter(pl.col("n") < 3)["n_test"] == 0).all()
    # cold-start users: their whole target history is test, none of it seen in training or validation
    cold_target = events.filter(pl.col("user_id").is_in(list(cold)) & (pl.col("domain") == "Tgt"))
    assert cold_target.height > 0 and (cold_target["split"] == "test").all()
    assert all(ds.eval_cases("Tgt", "test").filter(pl.col("user_id").is_in(list(cold)))["segment"] == "cold")
    # time order within each user-domain sequence
    assert events.equals(events.sort("domain", "user_id", "timestamp", "item_id"))


def test_eval_cases_never_show_a_test_item_in_history(small_workspace: Workspace) -> None:
    ds = Dataset.load(prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_user=5, min_item=3)).path)
    for domain in ds.domains:
        for stage in ("valid", "test"):
            cases = ds.eval_cases(domain, stage)
            overlap = cases.select(pl.col("history").list.set_intersection("targets").list.len())
            assert overlap.to_series().sum() == 0
    train = ds.train_sequences("Tgt").explode("items")
    test = ds.interactions().filter((pl.col("split") == "test") & (pl.col("domain") == "Tgt")).collect()
    assert train.join(test, left_on=["user_id", "items"], right_on=["user_id", "item_id"]).height == 0


def test_prepare_is_byte_for_byte_deterministic_and_seeded(small_workspace: Workspace) -> None:
    path = prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_item=3)).path
    first = {p.name: p.read_bytes() for p in path.iterdir()}
    prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_item=3))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == first
    cold_a = set(Dataset.load(path).users.filter("cold")["user_id"])
    prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_item=3, seed=7))
    assert set(Dataset.load(path).users.filter("cold")["user_id"]) != cold_a


def test_raw_ids_round_trip(small_workspace: Workspace) -> None:
    raw = pl.concat([pl.read_parquet(small_workspace.raw(d)) for d in ("Src", "Tgt")])
    ds = Dataset.load(prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_item=3)).path)
    items = pl.read_parquet(ds.path / "items.parquet")
    decoded = (
        ds.interactions()
        .collect()
        .join(ds.users, on="user_id")
        .join(items, on=["domain", "item_id"])
        .select("user", "item", "domain", "timestamp")
    )
    earliest = raw.group_by("user", "item", "domain").agg(pl.col("timestamp").min())
    joined = decoded.join(earliest, on=["user", "item", "domain"], how="left")
    assert joined["timestamp_right"].null_count() == 0
    assert (joined["timestamp"] == joined["timestamp_right"]).all()
    some_user = decoded["user"][0]
    assert ds.users["user"][ds.user_id(some_user)] == some_user


def test_timestamp_split_uses_global_cut_points() -> None:
    raw = {d: random_raw(d, 200, 60, 4000, seed=i).lazy() for i, d in enumerate(("S", "T"))}
    t1, t2 = 1_600_000_000_000, 1_650_000_000_000
    tables = build_tables(raw, "S", "T", PrepareConfig(split="timestamp", cold_start=0.0, t1=t1, t2=t2))
    events = tables["interactions"]
    assert (events.filter(pl.col("split") == "train")["timestamp"] < t1).all()
    valid = events.filter(pl.col("split") == "valid")["timestamp"]
    assert ((valid >= t1) & (valid < t2)).all() and valid.len() > 0
    assert (events.filter(pl.col("split") == "test")["timestamp"] >= t2).all()


@pytest.mark.parametrize("time_scale", [1, 2**20])
def test_interactions_are_in_user_time_order_whatever_the_time_range(time_scale: int) -> None:
    # 2**20 stretches the timestamps to ~58 bits, past what prepare packs with the user into one sort key
    raw = {
        d: random_raw(d, 200, 60, 4000, seed=i).with_columns(pl.col("timestamp") * time_scale).lazy()
        for i, d in enumerate(("S", "T"))
    }
    events = build_tables(raw, "S", "T", PrepareConfig(min_user=2, min_item=2))["interactions"]
    assert events.height > 1000
    assert events.equals(events.sort("domain", "user_id", "timestamp", "item_id"))


def test_bad_input_fails_cleanly_and_keeps_the_previous_dataset(small_workspace: Workspace) -> None:
    path = prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_item=3)).path
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(XdrecError, match="both 'Src'"):
        prepare(small_workspace, "Src", "Src")
    with pytest.raises(XdrecError, match="xdrec fetch Nope"):
        prepare(small_workspace, "Src", "Nope")
    with pytest.raises(XdrecError, match="empty after"):
        prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_user=10_000))
    pl.read_parquet(small_workspace.raw("Tgt")).drop("timestamp").write_parquet(small_workspace.raw("Tgt"))
    with pytest.raises(XdrecError, match=r"missing column.*timestamp"):
        prepare(small_workspace, "Src", "Tgt")
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    with pytest.raises(XdrecError, match="cold-start"):
        PrepareConfig(cold_start=1.5).check()


@pytest.mark.slow
def test_food_kitchen_end_to_end(food_kitchen_workspace: Workspace) -> None:
    result = prepare(food_kitchen_workspace, FOOD, KITCHEN)
    manifest = result.manifest
    assert manifest["domains"][FOOD]["users"] > 6500 and manifest["domains"][KITCHEN]["users"] > 6500
    assert manifest["overlap_users"] > 6500  # every user of this data is in both domains
    ds = Dataset.load(result.path)
    segments = ds.eval_cases(KITCHEN, "test").group_by("segment").len()
    assert set(segments["segment"]) >= {"warm", "cold"}
    again = build_tables(
        {d: pl.scan_parquet(food_kitchen_workspace.raw(d)) for d in (FOOD, KITCHEN)},
        FOOD,
        KITCHEN,
        PrepareConfig(),
    )
    assert_frame_equal(again["interactions"], ds.interactions().collect())


def test_output_does_not_depend_on_file_order_and_keeps_the_earliest_review() -> None:
    raw = {d: random_raw(d, 200, 60, 4000, seed=i) for i, d in enumerate(("S", "T"))}
    # a repeated (user, item): the earliest review wins, and a tie on it keeps the lowest rating
    extra = pl.DataFrame(
        {
            "user": ["U00001"] * 4,
            "item": ["TX99999"] * 4,
            "rating": [5.0, 2.0, 4.0, 1.0],
            "timestamp": [3_000, 1_000, 1_000, 2_000],
            "domain": ["T"] * 4,
        },
        schema=raw["T"].schema,
    )
    raw["T"] = pl.concat([raw["T"], extra])
    config = PrepareConfig(min_user=1, min_item=1)
    tables = build_tables({d: f.lazy() for d, f in raw.items()}, "S", "T", config)
    shuffled = {d: f.sample(fraction=1.0, shuffle=True, seed=3).lazy() for d, f in raw.items()}
    again = build_tables(shuffled, "S", "T", config)
    for name, frame in tables.items():
        assert_frame_equal(frame, again[name])
    user_id = tables["users"].filter(pl.col("user") == "U00001")["user_id"].item()
    item_id = tables["items"].filter(pl.col("item") == "TX99999")["item_id"].item()
    row = tables["interactions"].filter((pl.col("user_id") == user_id) & (pl.col("item_id") == item_id))
    assert row.select("domain", "timestamp", "rating").rows() == [("T", 1_000, 2.0)]
    # ids: users and items are numbered in sorted raw-id order
    assert tables["users"]["user"].is_sorted()
    for domain in ("S", "T"):
        assert tables["items"].filter(pl.col("domain") == domain)["item"].is_sorted()


def test_a_hash_collision_between_kept_ids_is_reported(
    small_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xdrec.data.prepare as prepare_module

    real_hash = prepare_module._id_hash

    def bad_hash(column: str, seed: int) -> pl.Expr:  # all user ids have one length: one hash for all
        return pl.col(column).str.len_bytes().cast(pl.UInt64) if column == "user" else real_hash(column, seed)

    monkeypatch.setattr(prepare_module, "_id_hash", bad_hash)
    with pytest.raises(XdrecError, match="user ids share a 64-bit hash"):
        prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_item=1))
