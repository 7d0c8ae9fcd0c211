"""Train / validation / test labels for a prepared interaction table, and the cold-start hold-out.

`loo` (per user and domain, time-ordered): last item test, second-last validation, the rest training;
a sequence shorter than three stays entirely in training (as in SASRec's reference code), since it has
too little to both learn from and predict.
`timestamp`: global cut points; before t1 training, [t1, t2) validation, from t2 test. The defaults are
the Amazon Reviews 2023 benchmark's.
Cold start: a seeded fraction of the users active in both domains lose their whole target history to
the test set; none of it is ever labelled training or validation.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

SplitKind = Literal["loo", "timestamp"]
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

    Rows must be sorted by domain, user, then time, so a user-domain sequence is one run of rows.
    """
    if kind == "loo":
        # One key per (domain, user); a row is its run's last if the next row's key differs, and the
        # run has >= 3 rows if the row two above (for the last) or one above (second last) shares it.
        key = pl.col("domain_code").cast(pl.Int64) * (1 << 32) + pl.col("user_id").cast(pl.Int64)
        same = [key.eq_missing(key.shift(n)) for n in (-2, -1, 1, 2)]
        down2, down1, up1, up2 = same
        split = (
            pl.when(~down1 & up2)
            .then(pl.lit(TEST, pl.UInt8))
            .when(down1 & ~down2 & up1)
            .then(pl.lit(VALID, pl.UInt8))
            .otherwise(pl.lit(TRAIN, pl.UInt8))
        )
    else:
        split = (
            pl.when(pl.col("timestamp") < t1)
            .then(pl.lit(TRAIN, pl.UInt8))
            .when(pl.col("timestamp") < t2)
            .then(pl.lit(VALID, pl.UInt8))
            .otherwise(pl.lit(TEST, pl.UInt8))
        )
    is_cold_target = (pl.col("domain_code") == target_code) & pl.col("user_id").is_in(cold_users.implode())
    return interactions.with_columns(
        split_code=pl.when(is_cold_target).then(pl.lit(TEST, pl.UInt8)).otherwise(split)
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
