"""The embedded synthetic data: raw-schema frames, seeded, and carrying the structure the demo relies on.

The structure checks are cheap numpy "oracles" standing in for the real models: an item-to-item transition
table (sequential signal), ridge regression from source to target item counts (transferable taste), and
popularity as the baseline both must beat.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from xdrec.data import synthetic
from xdrec.data.schema import RAW_SCHEMA, check_raw_schema
from xdrec.data.synthetic import DESCRIPTION, SyntheticConfig, generate, write_raw
from xdrec.errors import XdrecError

DEFAULT = SyntheticConfig()
SOURCE, TARGET = DEFAULT.source_domain, DEFAULT.target_domain
# The Amazon Reviews 2023 benchmark's timestamp-split cut points (ms).
T1, T2 = 1628643414042, 1658002729837
SMALL = SyntheticConfig(n_users=400, source_items=120, target_items=100, seed=3)


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return generate()


@pytest.fixture(scope="module")
def cores(frames: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Each domain after an iterative 5-core filter, with integer ids, as `prepare` will see it."""
    return {name: _with_ints(_k_core(frame, 5)) for name, frame in frames.items()}


# --- helpers: the oracles -------------------------------------------------------------------------------


def _k_core(frame: pl.DataFrame, k: int) -> pl.DataFrame:
    while True:
        kept = frame.filter(pl.len().over("user") >= k).filter(pl.len().over("item") >= k)
        if kept.height == frame.height:
            return kept
        frame = kept


def _with_ints(frame: pl.DataFrame) -> pl.DataFrame:
    """uid/iid: dense 0-based ints (iid per domain), keeping row order (user, then time)."""
    return frame.with_columns(
        uid=pl.col("user").rank("dense").cast(pl.Int64) - 1,
        iid=pl.col("item").rank("dense").cast(pl.Int64) - 1,
    )


def _hr_ndcg(scores: np.ndarray, positive: np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k of one relevant item per row; ties count in the positive's favour."""
    rank = (scores > scores[np.arange(len(positive)), positive][:, None]).sum(axis=1)
    hit = rank < k
    return float(hit.mean()), float((hit / np.log2(rank + 2)).mean())


def _sequential_oracles(frame: pl.DataFrame) -> dict[str, tuple[float, float]]:
    """Fit on the first 80% of every sequence; predict each user's last item from what came before."""
    rows = frame.with_columns(
        pos=pl.int_range(pl.len()).over("uid"),
        n=pl.len().over("uid"),
        prev=pl.col("iid").shift(1).over("uid"),
    )
    n_items = int(frame["iid"].max()) + 1
    fit = rows.filter(pl.col("pos") < (pl.col("n") * 0.8).floor())
    pairs = fit.filter(pl.col("prev").is_not_null())
    transition = np.zeros((n_items, n_items))
    np.add.at(transition, (pairs["prev"].to_numpy(), pairs["iid"].to_numpy()), 1)
    popularity = np.bincount(fit["iid"].to_numpy(), minlength=n_items) / fit.height
    last = rows.filter(pl.col("pos") == pl.col("n") - 1).sort("uid")
    earlier = rows.filter(pl.col("pos") < pl.col("n") - 1)
    history = np.zeros((int(frame["uid"].max()) + 1, n_items))
    np.add.at(history, (earlier["uid"].to_numpy(), earlier["iid"].to_numpy()), 1)
    # Bag of items: co-occurrence with everything the user had, order ignored.
    bag = history[last["uid"].to_numpy()] @ (transition + transition.T)
    positive = last["iid"].to_numpy()
    tie_break = 1e-3 * popularity
    return {
        "popularity": _hr_ndcg(np.broadcast_to(popularity, (len(positive), n_items)), positive),
        "transition": _hr_ndcg(transition[last["prev"].to_numpy()] + tie_break, positive),
        "bag": _hr_ndcg(bag + tie_break, positive),
    }


def _cross_domain_oracles(source: pl.DataFrame, target: pl.DataFrame) -> dict[str, tuple[float, float]]:
    """Ridge from source item counts to target item counts, fit on half the overlapping users, ranks
    the other half's last target item with no target history at all (the cold-start case)."""
    both = source.select("user").unique().join(target.select("user").unique(), on="user").sort("user")
    users = both.with_columns(row=pl.int_range(pl.len()).shuffle(seed=0))

    def counts(frame: pl.DataFrame) -> np.ndarray:
        rows = frame.join(users, on="user")
        out = np.zeros((users.height, int(frame["iid"].max()) + 1))
        np.add.at(out, (rows["row"].to_numpy(), rows["iid"].to_numpy()), 1)
        return out

    x, y = counts(source), counts(target)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    last = target.join(users, on="user").group_by("row").agg(pl.col("iid").last()).sort("row")
    half = users.height // 2
    fit, held = slice(0, half), slice(half, None)
    weights = np.linalg.solve(x[fit].T @ x[fit] + 20.0 * np.eye(x.shape[1]), x[fit].T @ y[fit])
    popularity = y[fit].sum(axis=0) / y[fit].sum()
    positive = last["iid"].to_numpy()[held]
    return {
        "popularity": _hr_ndcg(np.broadcast_to(popularity, (len(positive), y.shape[1])), positive),
        "ridge": _hr_ndcg(x[held] @ weights + 1e-6 * popularity, positive),
    }


def _replace(**changes: object) -> SyntheticConfig:
    return replace(SMALL, **changes)


def _top_decile_share(counts: np.ndarray) -> float:
    counts = np.sort(counts)[::-1]
    return float(counts[: max(1, len(counts) // 10)].sum() / counts.sum())


# --- the contract ---------------------------------------------------------------------------------------


def test_frames_have_the_raw_schema(frames: dict[str, pl.DataFrame]) -> None:
    assert list(frames) == [SOURCE, TARGET]
    for name, frame in frames.items():
        check_raw_schema(frame.schema, name)
        assert frame.schema == pl.Schema(RAW_SCHEMA)
        assert frame["domain"].unique().to_list() == [name]
        assert frame.select(pl.struct("user", "item").is_duplicated().any()).item() is False
        ratings = frame["rating"].drop_nulls()
        assert set(ratings.unique().to_list()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
        assert 0.02 < frame["rating"].null_count() / frame.height < 0.08
        assert 3.5 < ratings.mean() < 4.3  # skewed positive, as review ratings are


def test_ids_look_like_amazon_but_say_synthetic(frames: dict[str, pl.DataFrame]) -> None:
    patterns = {"user": r"^SYNU\d{6}$", "item": {SOURCE: r"^SYNB\d{5}$", TARGET: r"^SYNM\d{5}$"}}
    for name, frame in frames.items():
        assert frame["user"].str.contains(patterns["user"]).all()
        assert frame["item"].str.contains(patterns["item"][name]).all()
    assert "synthetic" in DESCRIPTION.lower() and "synthetic" in (synthetic.__doc__ or "").lower()
    assert not re.search(r"\bA[0-9A-Z]{13}\b", " ".join(frames[SOURCE]["user"].head(100)))


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    first, again = generate(SMALL), generate(SMALL)
    other = generate(SyntheticConfig(n_users=400, source_items=120, target_items=100, seed=4))
    for name in first:
        assert_frame_equal(first[name], again[name])
        assert not first[name].equals(other[name])


def test_timestamps_increase_per_user_and_split_like_amazon(frames: dict[str, pl.DataFrame]) -> None:
    for frame in frames.values():
        steps = frame.select(pl.col("timestamp").diff().over("user").drop_nulls())
        assert (steps["timestamp"] > 0).all()
        ts = frame["timestamp"]
        assert DEFAULT.start_ms <= ts.min() and ts.max() < DEFAULT.end_ms == 1672531200000  # 2023-01-01
        train, test = (ts < T1).mean(), (ts >= T2).mean()
        assert 0.7 < train < 0.88 and test > 0.04 and 1 - train - test > 0.08


def test_overlap_fractions_are_as_configured(frames: dict[str, pl.DataFrame]) -> None:
    for config, data in ((DEFAULT, frames), (SMALL, None), (_replace(both_fraction=0.5), None)):
        data = data or generate(config)
        source = set(data[config.source_domain]["user"])
        target = set(data[config.target_domain]["user"])
        n = len(source | target)
        assert n == config.n_users
        assert len(source & target) / n == pytest.approx(config.both_fraction, abs=0.005)
        assert len(source - target) / n == pytest.approx(config.source_only_fraction, abs=0.005)
        assert len(target - source) / n == pytest.approx(config.target_only_fraction, abs=0.005)


def test_popularity_and_activity_are_heavy_tailed(frames: dict[str, pl.DataFrame]) -> None:
    for frame in frames.values():
        items = frame.group_by("item").len()["len"].to_numpy()
        users = frame.group_by("user").len()["len"].to_numpy()
        assert _top_decile_share(items) > 0.40
        assert _top_decile_share(users) > 0.25  # 0.10 if everyone were equally active
        assert users.max() > 5 * np.median(users)


def test_default_size_after_5_core_fits_the_demo(cores: dict[str, pl.DataFrame]) -> None:
    users = set()
    for frame in cores.values():
        users |= set(frame["user"])
        assert 300 <= frame["item"].n_unique() <= 1_000
        assert 15 <= frame.height / frame["user"].n_unique() <= 30
    assert 2_000 <= len(users) <= 3_000


def test_order_matters_the_previous_item_predicts_the_next(cores: dict[str, pl.DataFrame]) -> None:
    for frame in cores.values():
        scores = _sequential_oracles(frame)
        hr_pop, hr_transition, hr_bag = (scores[m][0] for m in ("popularity", "transition", "bag"))
        assert hr_transition > 3 * hr_pop
        assert hr_transition > 1.2 * hr_bag  # the same co-occurrences, used without order, lose


def test_source_history_predicts_the_target_of_cold_users(cores: dict[str, pl.DataFrame]) -> None:
    scores = _cross_domain_oracles(cores[SOURCE], cores[TARGET])
    (hr_pop, ndcg_pop), (hr_ridge, ndcg_ridge) = scores["popularity"], scores["ridge"]
    assert hr_ridge > 1.4 * hr_pop and ndcg_ridge > 1.4 * ndcg_pop


def test_no_shared_taste_no_transfer() -> None:
    """The control: with unrelated domain tastes the same oracle gains nothing over popularity."""
    config = SyntheticConfig(domain_specific_taste=1.0, seed=5)
    data = generate(config)
    scores = _cross_domain_oracles(*(_with_ints(_k_core(data[d], 5)) for d in config.domains))
    assert scores["ridge"][0] < 1.3 * scores["popularity"][0]  # measured 0.8-1.15x over seeds 1-5


# --- files and config -----------------------------------------------------------------------------------


def test_write_raw_writes_one_parquet_per_domain(tmp_path) -> None:
    paths = write_raw(tmp_path / "raw", SMALL)
    assert paths == {name: tmp_path / "raw" / f"{name}.parquet" for name in SMALL.domains}
    expected = generate(SMALL)
    for name, path in paths.items():
        check_raw_schema(pl.read_parquet_schema(path), str(path))
        assert_frame_equal(pl.read_parquet(path), expected[name])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(p.name for p in paths.values())


@pytest.mark.parametrize(
    "changes",
    [
        {"n_users": 0},
        {"both_fraction": 0.8, "source_only_fraction": 0.3},
        {"source_only_fraction": -0.1},
        {"target_items": 5},
        {"topic_stickiness": 1.5},
        {"target_domain": "Synthetic_Books"},
        {"source_domain": "../Books"},
        {"end_ms": SMALL.start_ms},
    ],
)
def test_invalid_config_is_a_clear_error(changes: dict) -> None:
    with pytest.raises(XdrecError, match="invalid synthetic config"):
        _replace(**changes)


def test_fractions_may_leave_no_target_only_users() -> None:
    config = _replace(both_fraction=0.9, source_only_fraction=0.1)
    assert config.target_only_fraction == 0.0
    data = generate(config)
    assert set(data[config.target_domain]["user"]) <= set(data[config.source_domain]["user"])


def test_large_catalogue_path_draws_the_same_data(monkeypatch) -> None:
    """Repeats found by comparing with the sequence so far (no users x items matrix) change nothing."""
    config = SyntheticConfig(n_users=400, source_items=500, target_items=300, seed=5)
    by_matrix = generate(config)
    monkeypatch.setattr(synthetic, "_SEEN_MATRIX_MAX_ITEMS", 0)
    monkeypatch.setattr(synthetic, "_COMPARE_BATCH", synthetic._SEEN_MATRIX_CELLS // 500)  # same batches
    by_compare = generate(config)
    for name in config.domains:
        assert by_compare[name].equals(by_matrix[name])
