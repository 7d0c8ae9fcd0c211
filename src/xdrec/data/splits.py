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

# The Amazon Reviews 2023 benchmark's absolute cut points (Unix ms).
BENCHMARK_T1 = 1628643414042
BENCHMARK_T2 = 1658002729837


def choose_cold_users(interactions: pl.DataFrame, target_code: int, fraction: float, seed: int) -> pl.Series:
    """A seeded sample (sorted user ids) of `fraction` of the users with rows in both domains.

    `interactions` has user_id and domain_code (0 source, 1 target).
    """
    both = (
        interactions.group_by("user_id")
        .agg(pl.col("domain_code").n_unique().alias("n"))
        .filter(pl.col("n") == 2)["user_id"]
        .sort()
    )
    n_cold = round(fraction * both.len())
    picked = np.random.default_rng(seed).permutation(both.len())[:n_cold]
    return both.gather(np.sort(picked)).alias("user_id") if n_cold else both.clear()


def assign_splits(
    interactions: pl.LazyFrame,
    kind: SplitKind,
    *,
    target_code: int,
    cold_users: pl.Series,
    t1: int = BENCHMARK_T1,
    t2: int = BENCHMARK_T2,
) -> pl.LazyFrame:
    """Add `split` (train | valid | test). Rows must be sorted by domain, user, time within each group."""
    if kind == "loo":
        group = ["domain_code", "user_id"]
        length = pl.len().over(group)
        from_end = length - 1 - pl.int_range(pl.len()).over(group)
        split = (
            pl.when(length < 3)
            .then(pl.lit("train"))
            .when(from_end == 0)
            .then(pl.lit("test"))
            .when(from_end == 1)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
        )
    else:
        split = (
            pl.when(pl.col("timestamp") < t1)
            .then(pl.lit("train"))
            .when(pl.col("timestamp") < t2)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("test"))
        )
    is_cold_target = (pl.col("domain_code") == target_code) & pl.col("user_id").is_in(cold_users.implode())
    return interactions.with_columns(split=pl.when(is_cold_target).then(pl.lit("test")).otherwise(split))
