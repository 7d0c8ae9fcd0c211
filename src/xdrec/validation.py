"""The trainer's validation callback: full-ranking NDCG@10 of the model on (a sample of) validation users.

Early stopping and the choice of the best epoch read only this, never the test split.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
import torch

from xdrec.evaluation import per_user_metrics
from xdrec.scoring import Scorer

# Early stopping ranks at most this many validation users each epoch: enough for a stable mean (its
# standard error is ~0.003 NDCG), and a small share of an epoch even on a Books-sized catalogue.
VALIDATION_USERS = 10_000
METRIC = "NDCG@10"


def validation_sample(cases: pl.DataFrame, max_users: int = VALIDATION_USERS, seed: int = 0) -> pl.DataFrame:
    """The validation users early stopping ranks: a seeded sample of at most `max_users` of `cases`, in
    user order (every choice made on validation after training ranks the same ones)."""
    return cases.sample(max_users, seed=seed).sort("user_id") if cases.height > max_users else cases


def validation_metric(
    cases: pl.DataFrame,
    n_items: int,
    scorer_for: Callable[[torch.nn.Module], Scorer],
    *,
    metric: str = METRIC,
    max_users: int = VALIDATION_USERS,
    seed: int = 0,
) -> Callable[[torch.nn.Module], float] | None:
    """The trainer's `validate` callback: mean full-ranking `metric` of the model, wrapped as a Scorer by
    `scorer_for`, on the validation `cases` (a seeded sample of `max_users`, the same every epoch).

    None when there are no validation cases (the trainer then keeps the last weights). Under torchrun each
    rank ranks its share of the users and the shares are gathered (`per_user_metrics`'s `sharded`), so
    every rank gets the same mean.
    """
    if cases.height == 0:
        return None
    cases = validation_sample(cases, max_users, seed)
    k = int(metric.split("@")[1])

    def validate(model: torch.nn.Module) -> float:
        return float(
            per_user_metrics(scorer_for(model), cases, n_items, ks=(k,), sharded=True)[metric].mean()
        )

    return validate
