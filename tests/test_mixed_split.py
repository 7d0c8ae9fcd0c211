"""The `mixed` split (leave-one-out on the merged two-domain timeline), the users-of-both-domains filter."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import FOOD, KITCHEN, random_raw
from xdrec.cli import app
from xdrec.data.dataset import Dataset
from xdrec.data.prepare import PrepareConfig, build_tables, prepare
from xdrec.data.schema import RAW_SCHEMA
from xdrec.strategies.joint import scoring_timelines
from xdrec.workspace import Workspace


def brute_force_mixed(events: pl.DataFrame, source: str, cold: set[int]) -> dict[tuple[int, str, int], str]:
    """The protocol as the papers state it, one user at a time: sort the merged timeline (time, source
    before target, item id), the last row test, the one before valid, when there are at least three.
    Cold users: source all train, target all test."""
    out = {}
    for (user,), rows in events.group_by("user_id"):
        timeline = sorted(
            rows.iter_rows(named=True), key=lambda r: (r["timestamp"], r["domain"] != source, r["item_id"])
        )
        for i, r in enumerate(timeline):
            if user in cold:
                label = "train" if r["domain"] == source else "test"
            elif len(timeline) >= 3 and i == len(timeline) - 1:
                label = "test"
            elif len(timeline) >= 3 and i == len(timeline) - 2:
                label = "valid"
            else:
                label = "train"
            out[(user, r["domain"], r["item_id"])] = label
    return out


def _raw(seed: int, n_rows: int = 3000) -> dict[str, pl.LazyFrame]:
    # user_prefix makes some users one-domain: "U" in both, "S"/"T" only in one
    frames = {
        "S": pl.concat(
            [random_raw("S", 150, 60, n_rows, seed), random_raw("S", 20, 60, 200, seed + 10, "S")]
        ),
        "T": pl.concat(
            [random_raw("T", 150, 50, n_rows, seed + 1), random_raw("T", 20, 50, 200, seed + 11, "T")]
        ),
    }
    # coarse times: many same-time interactions across domains, so the tie rule is exercised
    return {d: f.with_columns(pl.col("timestamp") // 10**10).lazy() for d, f in frames.items()}


@pytest.mark.parametrize(("seed", "cold_start"), [(0, 0.0), (1, 0.0), (2, 0.3)])
def test_mixed_split_matches_the_protocol_user_by_user(seed: int, cold_start: float) -> None:
    config = PrepareConfig(min_user=2, min_item=2, split="mixed", cold_start=cold_start, seed=seed)
    tables = build_tables(_raw(seed), "S", "T", config)
    events = tables["interactions"]
    cold = set(tables["users"].filter("cold")["user_id"].to_list())
    assert (len(cold) > 0) == (cold_start > 0)
    expected = brute_force_mixed(events, "S", cold)
    got = {(u, d, i): s for u, d, i, s in events.select("user_id", "domain", "item_id", "split").iter_rows()}
    assert got == expected
    # every user is active in both domains, tested at most once, and the rows keep (domain, user, time) order
    assert (events.group_by("user_id").agg(pl.col("domain").n_unique())["domain"] == 2).all()
    warm_tests = events.filter((pl.col("split") == "test") & ~pl.col("user_id").is_in(list(cold)))
    assert warm_tests["user_id"].is_unique().all()
    assert events.equals(events.sort("domain", "user_id", "timestamp", "item_id"))
    # ties: some test item shares its timestamp with an item of the other domain (exercised, not vacuous)
    assert _tied_tests(events) > 0


def _tied_tests(events: pl.DataFrame) -> int:
    test = events.filter(pl.col("split") == "test").select("user_id", "timestamp", test_domain="domain")
    return (
        events.join(test, on=["user_id", "timestamp"])
        .filter(pl.col("domain") != pl.col("test_domain"))
        .height
    )


def test_same_timestamp_orders_source_first_then_target() -> None:
    def rows(domain: str, items: list[str], times: list[int]) -> pl.LazyFrame:
        n = len(items)
        return pl.LazyFrame(
            {
                "user": ["u"] * n,
                "item": items,
                "rating": [None] * n,
                "timestamp": times,
                "domain": [domain] * n,
            },
            schema=RAW_SCHEMA,
        )

    # the target's last item and the source's last item share a time: target is test, source valid
    raw = {"S": rows("S", ["s1", "s2"], [1, 5]), "T": rows("T", ["t1", "t2"], [2, 5])}
    # listed target first, to show the order comes from the domains' roles, not from the input
    events = build_tables(
        raw, "S", "T", PrepareConfig(min_user=1, min_item=1, split="mixed", cold_start=0.0)
    )["interactions"]
    labels = dict(zip(events["item_id"].cast(pl.String) + events["domain"], events["split"], strict=True))
    assert labels == {"1S": "train", "2S": "valid", "1T": "train", "2T": "test"}
    # the reverse direction (T as source) puts S's item last
    swapped = build_tables(
        raw, "T", "S", PrepareConfig(min_user=1, min_item=1, split="mixed", cold_start=0.0)
    )
    test = swapped["interactions"].filter(pl.col("split") == "test")
    assert test["domain"].to_list() == ["S"]


def test_mixed_drops_one_domain_users_and_says_so(small_workspace: Workspace) -> None:
    raw = {d: pl.scan_parquet(small_workspace.raw(d)) for d in ("Src", "Tgt")}
    loo = build_tables(raw, "Src", "Tgt", PrepareConfig(min_user=1, min_item=1))["interactions"]
    both = loo.group_by("user_id").agg(pl.col("domain").n_unique()).filter(pl.col("domain") == 2)
    config = PrepareConfig(min_user=1, min_item=1, split="mixed", cold_start=0.0)
    result = prepare(small_workspace, "Src", "Tgt", config)
    assert result.manifest["users"] == both.height < loo["user_id"].n_unique()
    (note,) = result.notes
    dropped = loo["user_id"].n_unique() - both.height
    assert f"{dropped:,} users" in note and f"kept {both.height:,} of {loo['user_id'].n_unique():,}" in note
    # each domain's test users add up to the users with a test interaction, each tested once
    splits = {d: result.manifest["domains"][d]["splits"].get("test", 0) for d in ("Src", "Tgt")}
    data = Dataset.load(result.path)
    assert sum(splits.values()) == data.interactions().filter(pl.col("split") == "test").collect().height
    assert sum(data.eval_cases(d, "test").height for d in ("Src", "Tgt")) == sum(splits.values())


def test_mixed_on_one_domain_users_only_is_an_error_from_the_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ws = Workspace(tmp_path / "ws")
    ws.raw_dir.mkdir(parents=True)
    random_raw("Src", 50, 40, 800, seed=1, user_prefix="A").write_parquet(ws.raw("Src"))
    random_raw("Tgt", 50, 40, 800, seed=2, user_prefix="B").write_parquet(ws.raw("Tgt"))
    result = CliRunner().invoke(
        app, ["--workspace", str(ws.root), "prepare", "Src", "Tgt", "--split", "mixed"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("error: --split mixed keeps users with at least 1 interaction")
    assert "nothing is left" in result.output and "Traceback" not in result.output
    assert not ws.dataset_dir("Src+Tgt").exists()


def test_prepare_mixed_from_the_cli_notes_what_it_drops(small_workspace: Workspace) -> None:
    args = ["--workspace", str(small_workspace.root), "prepare", "Src", "Tgt", "--split", "mixed"]
    result = CliRunner().invoke(app, [*args, "--min-per-domain", "3", "--cold-start", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert "note: --min-per-domain keeps users with at least 3 interaction(s) in each domain" in result.stderr
    manifest = Dataset.from_workspace(small_workspace).manifest
    assert manifest["parameters"]["min_per_domain"] == 3 and manifest["parameters"]["split"] == "mixed"
    counts = manifest["domains"]
    assert counts["Src"]["splits"]["test"] > 0 and counts["Tgt"]["splits"]["test"] > 0
    bad = CliRunner().invoke(app, [*args, "--min-per-domain", "-1"])
    assert bad.exit_code == 2 and "error: --min-per-domain must be 0 or more" in bad.output  # usage error


def test_min_per_domain_is_left_out_of_the_manifest_when_unset() -> None:
    # so datasets prepared before the option keep their manifest, and the models trained on them stay valid
    assert "min_per_domain" not in PrepareConfig().parameters()
    assert PrepareConfig(min_per_domain=2).parameters()["min_per_domain"] == 2
    assert PrepareConfig(split="mixed").per_domain == 1 and PrepareConfig().per_domain == 0


@pytest.mark.slow
def test_food_kitchen_mixed_split_is_the_papers(food_kitchen_workspace: Workspace) -> None:
    config = PrepareConfig(min_user=1, min_item=1, split="mixed", cold_start=0.0)
    result = prepare(food_kitchen_workspace, FOOD, KITCHEN, config)
    counts = result.manifest["domains"]
    # every row of the release is kept, and the published split's test users per domain
    assert (counts[FOOD]["interactions"], counts[KITCHEN]["interactions"]) == (83_663, 89_885)
    assert (counts[FOOD]["items"], counts[KITCHEN]["items"], result.manifest["users"]) == (
        11_837,
        16_258,
        7_144,
    )
    assert (counts[FOOD]["splits"]["test"], counts[KITCHEN]["splits"]["test"]) == (2_419, 4_725)
    assert result.notes == ()
    data = Dataset.load(result.path)
    events = data.interactions().collect()
    # per user: one test row, and every training row before the validation row before the test row in the
    # merged order (time, source first): no validation or test item is in training
    order = events.with_columns(src_first=pl.col("domain") != FOOD).sort(
        "user_id", "timestamp", "src_first", "item_id"
    )
    last = order.group_by("user_id", maintain_order=True).agg(pl.col("split").tail(2))
    assert (last["split"].list.get(-1) == "test").all() and (last["split"].list.get(0) == "valid").all()
    assert (order.filter(pl.col("split") != "train").group_by("user_id").len()["len"] == 2).all()
    for domain in (FOOD, KITCHEN):
        cases = data.eval_cases(domain, "test")
        assert cases.height == counts[domain]["splits"]["test"] and set(cases["segment"]) == {"warm"}
        # the history is all of the user's items in this domain but the test item, in time order
        rows = events.filter(
            (pl.col("domain") == domain) & pl.col("user_id").is_in(cases["user_id"].implode())
        )
        seen = (
            rows.filter(pl.col("split") != "test")
            .group_by("user_id", maintain_order=True)
            .agg(pl.col("item_id"))
        )
        expected = cases.select("user_id").join(seen, on="user_id", how="left")["item_id"]
        assert cases["history"].to_list() == [x or [] for x in expected.to_list()]
        tests = rows.filter(pl.col("split") == "test").sort("user_id")
        assert cases["targets"].to_list() == [[i] for i in tests["item_id"]]
        train = data.train_sequences(domain).explode("items")
        held = events.filter((pl.col("domain") == domain) & (pl.col("split") != "train"))
        assert train.join(held, left_on=["user_id", "items"], right_on=["user_id", "item_id"]).height == 0


def test_other_domain_context_adds_the_valid_item_under_mixed_only(small_workspace: Workspace) -> None:
    """What cross-domain models read from the other domain: its training split, plus under mixed the
    user's validation item, which never reaches the item being predicted: a user evaluated at validation
    has none in the other domain, and a (warm) user's test item comes after it on the merged timeline."""
    config = PrepareConfig(min_user=1, min_item=1, split="mixed", cold_start=0.3, seed=3)
    data = Dataset.load(prepare(small_workspace, "Src", "Tgt", config).path)
    events = data.interactions().collect()
    cold = data.users.filter("cold")["user_id"]
    timeline = events.sort("user_id", "timestamp", pl.col("domain") != "Src", "item_id").with_columns(
        position=pl.int_range(pl.len()).over("user_id")
    )
    reaching = 0
    for domain, other in (("Tgt", "Src"), ("Src", "Tgt")):
        context = data.context_sequences(other).explode("items").rename({"items": "item_id"})
        expected = events.filter((pl.col("domain") == other) & pl.col("split").is_in(["train", "valid"]))
        assert sorted(context.iter_rows()) == sorted(expected.select("user_id", "item_id").iter_rows())
        rows = timeline.filter((pl.col("domain") == other) & pl.col("split").is_in(["train", "valid"]))
        for stage in ("valid", "test"):
            predicted = timeline.filter((pl.col("domain") == domain) & (pl.col("split") == stage))
            users = data.eval_cases(domain, stage)["user_id"]
            seen = rows.filter(pl.col("user_id").is_in(users.implode()))
            if stage == "valid":  # one validation item per user: none in the other domain
                assert (seen["split"] == "train").all()
            warm = predicted.filter(~pl.col("user_id").is_in(cold.implode()))
            before = seen.join(warm.group_by("user_id").agg(predicted=pl.col("position").min()), on="user_id")
            assert (before["position"] < before["predicted"]).all()
            reaching += seen.filter(pl.col("split") == "valid").height if stage == "test" else 0
    assert reaching > 0  # exercised: some users' most recent other-domain item is their validation item

    # joint reads it too: a Tgt test user whose validation item is in Src has it in their timeline
    user, item = (
        events.filter((pl.col("domain") == "Src") & (pl.col("split") == "valid"))
        .join(events.filter((pl.col("domain") == "Tgt") & (pl.col("split") == "test")), on="user_id")
        .select("user_id", "item_id")
        .row(0)
    )
    tokens = scoring_timelines(data, "Tgt", max_len=200)[user]
    assert item in tokens.tolist()  # source items keep their ids in joint's token space

    # under loo a domain's validation item can come after the other domain's test item: training only
    loo = Dataset.load(prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_user=1, min_item=1)).path)
    assert loo.context_splits() == ("train",)
    assert loo.context_sequences("Src").equals(loo.train_sequences("Src"))
