"""A strategy that competes with the target model for users who have target history serves that model
instead when validation does not prefer it.

On Grocery -> Home_and_Kitchen with tuned settings, `finetune` (validation 0.0254 against target-only's
0.0272) and `joint` (0.0208) lost significantly to target-only on the warm test users: a strategy that
validation already knew to be worse. So after training, `compare_with_target` (a plan's `finish` hook)
ranks the validation users early stopping ranked (every one has target history) with the trained model
and the target model and records `falls_back` unless the trained model is better with a paired 95% CI
above zero: a model validation cannot tell apart from the target model is not served in its place.
`with_fallback` then gives users with target history the target model's scores; users without (cold)
keep the strategy's own. `bag` makes the same choice through its blend weight (0 = target-only alone),
and so does `joint` (`choose_blend`): a weight between 0 and 1 blends the two models' scores for those
users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
import torch
from torch import Tensor, nn

from xdrec.checkpoint import Checkpoint
from xdrec.data.dataset import Dataset
from xdrec.evaluation import ALL_SEGMENT, paired_deltas, per_user_metrics
from xdrec.scoring import Precomputed, Scorer, pad_left
from xdrec.sequence_scorer import SequenceScorer
from xdrec.training import TrainResult
from xdrec.validation import METRIC, validation_sample


def compare_with_target(
    data: Dataset, domain: str, target_model: SequenceScorer, scorer: Callable[[nn.Module], Scorer]
) -> Callable[[nn.Module, TrainResult], dict[str, Any]]:
    """A `Plan.finish` hook for a plan validated on `domain`'s validation users: the trained model
    (`scorer(model)`) and `target_model` ranked on the same users, {"falls_back": unless the paired
    difference's 95% bootstrap CI is above zero, "valid_against_target": both means and that difference}.
    A model validation cannot tell apart from the target model is not served in its place: on the 5-core
    loo data `finetune`, 4% above target-only on validation, was below it on test in one history bucket.
    Runs on one process (rank 0 under torchrun), unsharded."""
    cases = validation_sample(data.eval_cases(domain, "valid"))
    baseline = f"{data.role(domain)}-only"  # the name paired_deltas pairs every model with

    def compare(trained: nn.Module, result: TrainResult) -> dict[str, Any]:
        if result.best_metric is None:  # no validation users: nothing to compare on
            return {"falls_back": False}
        n_items = data.n_items(domain)
        per_user = {
            baseline: per_user_metrics(target_model, cases, n_items, ks=(10,)),
            "own": per_user_metrics(scorer(trained), cases, n_items, ks=(10,)),
        }
        deltas = paired_deltas(per_user, data.role(domain), METRIC)
        mine = (pl.col("model") == "own") & (pl.col("segment") == ALL_SEGMENT)
        row = deltas.filter(mine).row(0, named=True)
        compared = {
            "own": float(per_user["own"][METRIC].mean()),
            "target": float(per_user[baseline][METRIC].mean()),
            "delta": [row["delta"], row["delta_lo"], row["delta_hi"]],
        }
        return {"falls_back": not row["delta_lo"] > 0, "valid_against_target": compared}

    return compare


class WarmBlend:
    """Users with target history: the target model's scores blended with the strategy's,
    (1 - weight) * target + weight * own, where weight 0 is the target model alone (a fallback) and 1 the
    strategy alone; the others (no history): the strategy's own. Both score with logits of a softmax over
    the domain's items, so the blend ranks as the product of experts p_target^(1 - w) * p_own^w does (the
    log-softmax's per-user constants do not change a ranking)."""

    def __init__(self, own: Scorer, target: Scorer, name: str, weight: float = 0.0) -> None:
        if not 0 <= weight <= 1:
            raise ValueError(f"a blend weight is between 0 and 1, got {weight}")
        self.own, self.target, self.name, self.weight = own, target, name, weight
        # what the report says of its rows for users with history
        self.defers_to = target.name if weight == 0 else None
        self.history_only = getattr(own, "history_only", False)

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        has_history = (history != 0).any(1).cpu()
        target = self.target.scores(user_ids, history)
        if has_history.all() and self.weight == 0:
            return target
        own = self.own.scores(user_ids, history).to(target.device, target.dtype)
        return warm_blend(own, target, has_history, self.weight)


def warm_blend(own: Tensor, target: Tensor, has_history: Tensor, weight: float) -> Tensor:
    """`WarmBlend`'s scores from both models' scores (B, n_items + 1) and which rows have history (B,)."""
    warm = target if weight == 0 else torch.lerp(target, own, weight)
    return torch.where(has_history.to(target.device)[:, None], warm, own)


# The weights `choose_blend` tries, the target model alone first.
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Validation users per chunk when choosing a blend: both models score a chunk once for every weight.
CHUNK = 2048


def choose_blend(
    own: Scorer, target: Scorer, cases: pl.DataFrame, n_items: int
) -> tuple[float, dict[str, float]]:
    """The blend weight with the best validation NDCG@10 on `cases` (a seeded sample of at most
    VALIDATION_USERS, as early stopping ranks; ties: the smaller weight), and every weight's value."""
    cases = validation_sample(cases)
    sums, users = dict.fromkeys(BLEND_WEIGHTS, 0.0), 0
    for start in range(0, cases.height, CHUNK):
        chunk = cases[start : start + CHUNK]
        user_ids = torch.from_numpy(chunk["user_id"].to_numpy().astype("int64"))
        history = pad_left(chunk["history"].to_list())
        with torch.no_grad():
            theirs = target.scores(user_ids, history)
            mine = own.scores(user_ids, history).to(theirs.device, theirs.dtype)
        has_history = (history != 0).any(1)
        for w in BLEND_WEIGHTS:
            given = Precomputed(user_ids, warm_blend(mine, theirs, has_history, w), "blend")
            ranked = per_user_metrics(given, chunk, n_items)[METRIC]
            sums[w] += float(ranked.sum())
        users += ranked.len()  # users with a target (the metrics skip the others)
    tried = {w: total / max(users, 1) for w, total in sums.items()}
    best = max(BLEND_WEIGHTS, key=lambda w: (tried[w], -w))
    return best, {f"{w:g}": v for w, v in tried.items()}


# What `transfer` and `run` say of a strategy that falls back.
FALLS_BACK = (
    "not better than the target model on validation (paired 95% CI above 0): users with target history "
    "get its scores"
)


def with_fallback(own: Scorer, checkpoint: Checkpoint, target_model: SequenceScorer | None) -> Scorer:
    """The scorer a strategy's `load` returns: `own`, or its fallback when the checkpoint says so (a
    checkpoint from before the fallback existed names no target model and gets `own`)."""
    if not checkpoint.config.get("falls_back") or target_model is None:
        return own
    return WarmBlend(own, target_model, own.name)
