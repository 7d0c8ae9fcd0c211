"""Train / validation / test labels for a prepared interaction table, and the cold-start hold-out.

`loo` (per user and domain, time-ordered): last item test, second-last validation, the rest training;
a sequence shorter than three stays entirely in training (as in SASRec's reference code), since it has
too little to both learn from and predict.
`timestamp`: global cut points; before t1 training, [t1, t2) validation, from t2 test. The defaults are
the Amazon Reviews 2023 benchmark's.
`mixed` (the cross-domain papers' protocol: C2DSR, Tri-CDR, ABXI): leave-one-out on each user's merged
two-domain timeline. The user's last interaction of either domain is test, the one before it validation
(whatever its domain), the rest training; each user is tested once, in the domain of their last
interaction. Same-timestamp interactions are ordered source first, then target (as the papers' releases
order them), and by item id within a domain (the order of the per-domain sequences). A merged timeline
shorter than three stays in training, as under `loo`.
Cold start: a seeded fraction of the users active in both domains lose their whole target history to
the test set; none of it is ever labelled training or validation. Under `mixed` these users are taken out
of the merged leave-one-out: their whole source history is training (what they are ranked from) and their
whole target history test, so they too are tested once, as `cold` in the target. The papers' protocol
holds out no one (`--cold-start 0`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

SplitKind = Literal["loo", "timestamp", "mixed"]
SPLIT_KINDS: tuple[SplitKind, ...] = ("loo", "timestamp", "mixed")
SPLIT_NAMES = ("train", "valid", "test")  # by split_code
TRAIN, VALID, TEST = range(3)

# The Amazon Reviews 2023 benchmark's absolute cut points (Unix ms).
BENCHMARK_T1 = 1628643414042
BENCHMARK_T2 = 1658002729837


def choose_cold_users(overlap: pl.Series, fraction: float, seed: int) -> pl.Series:
    """A seeded sample (sorted user ids) of `fraction` of `overlap`, the users active in both domains.

    `overlap` must be sorted (the sample is drawn by position).
    """
    n_cold = round(fraction * overlap.len())
    picked = np.random.default_rng(seed).permutation(overlap.len())[:n_cold]
    return overlap.gather(np.sort(picked)).alias("user_id") if n_cold else overlap.clear().alias("user_id")


def assign_splits(
    interactions: pl.LazyFrame,
    kind: SplitKind,
    *,
    target_code: int,
    cold_users: pl.Series,
    t1: int = BENCHMARK_T1,
    t2: int = BENCHMARK_T2,
) -> pl.LazyFrame:
    """Add `split_code` (0 train, 1 valid, 2 test: SPLIT_NAMES; `split_label()` names it).

    Rows must be sorted by domain, user, then time (ties by item id), so a user-domain sequence is one
    run of rows; the output keeps that order.
    """
    is_cold = pl.col("user_id").is_in(cold_users.implode())
    is_cold_target = (pl.col("domain_code") == target_code) & is_cold
    if kind == "mixed":
        # The merged timeline: per user by time, source (code 0) before target at the same time. Its
        # labels are computed in that order and the rows then put back in (domain, user, time) order.
        merged = interactions.with_row_index("_row").sort("user_id", "timestamp", "domain_code", "item_id")
        split = _last_two(pl.col("user_id").cast(pl.Int64))
        cold = (
            pl.when(is_cold_target).then(pl.lit(TEST, pl.UInt8)).when(is_cold).then(pl.lit(TRAIN, pl.UInt8))
        )
        return merged.with_columns(split_code=cold.otherwise(split)).sort("_row").drop("_row")
    if kind == "loo":
        split = _last_two(pl.col("domain_code").cast(pl.Int64) * (1 << 32) + pl.col("user_id").cast(pl.Int64))
    else:
        split = (
            pl.when(pl.col("timestamp") < t1)
            .then(pl.lit(TRAIN, pl.UInt8))
            .when(pl.col("timestamp") < t2)
            .then(pl.lit(VALID, pl.UInt8))
            .otherwise(pl.lit(TEST, pl.UInt8))
        )
    return interactions.with_columns(
        split_code=pl.when(is_cold_target).then(pl.lit(TEST, pl.UInt8)).otherwise(split)
    )


def _last_two(key: pl.Expr) -> pl.Expr:
    """Leave-one-out over runs of rows sharing `key`: the run's last row test, the one before validation.

    A row is its run's last if the next row's key differs, and the run has >= 3 rows if the row two above
    (for the last) or one above (second last) shares it; shorter runs stay in training.
    """
    down2, down1, up1, up2 = (key.eq_missing(key.shift(n)) for n in (-2, -1, 1, 2))
    return (
        pl.when(~down1 & up2)
        .then(pl.lit(TEST, pl.UInt8))
        .when(down1 & ~down2 & up1)
        .then(pl.lit(VALID, pl.UInt8))
        .otherwise(pl.lit(TRAIN, pl.UInt8))
    )


def split_label() -> pl.Expr:
    """`split` (train | valid | test) from `split_code`."""
    code = pl.col("split_code")
    return (
        pl.when(code == TRAIN)
        .then(pl.lit(SPLIT_NAMES[TRAIN]))
        .when(code == VALID)
        .then(pl.lit(SPLIT_NAMES[VALID]))
        .otherwise(pl.lit(SPLIT_NAMES[TEST]))
        .alias("split")
    )
