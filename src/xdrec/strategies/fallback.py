"""A strategy that competes with the target model for users who have target history serves that model
instead when validation does not prefer it.

On Grocery -> Home_and_Kitchen with tuned settings, `finetune` (validation 0.0254 against target-only's
0.0272) and `joint` (0.0208) lost significantly to target-only on the warm test users: a strategy that
validation already knew to be worse. So after training, `compare_with_target` (a plan's `finish` hook)
ranks the validation users early stopping ranked (every one has target history) with the target model
and records `falls_back` when the trained model's best validation score is not above it. `with_fallback`
then gives users with target history the target model's scores; users without (cold) keep the
strategy's own. `bag` makes the same choice through its blend weight (0 = target-only alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from xdrec.checkpoint import Checkpoint
from xdrec.data.dataset import Dataset
from xdrec.evaluation import per_user_metrics
from xdrec.scoring import Scorer
from xdrec.sequence_scorer import SequenceScorer
from xdrec.training import TrainResult
from xdrec.validation import METRIC, validation_sample


def compare_with_target(
    data: Dataset, domain: str, target_model: SequenceScorer
) -> Callable[[nn.Module, TrainResult], dict[str, Any]]:
    """A `Plan.finish` hook for a plan validated on `domain`'s validation users: {"falls_back": its best
    validation score not above `target_model`'s on the same users, "valid_against_target": both}. Runs on
    one process (rank 0 under torchrun), unsharded."""
    cases = validation_sample(data.eval_cases(domain, "valid"))

    def compare(_: nn.Module, result: TrainResult) -> dict[str, Any]:
        if result.best_metric is None:  # no validation users: nothing to compare on
            return {"falls_back": False}
        own = result.best_metric
        target = float(per_user_metrics(target_model, cases, data.n_items(domain), ks=(10,))[METRIC].mean())
        return {"falls_back": own <= target, "valid_against_target": {"own": own, "target": target}}

    return compare


class WarmFallback:
    """Users with target history: the target model's scores; the others: the strategy's own."""

    def __init__(self, own: Scorer, target: Scorer, name: str) -> None:
        self.own, self.target, self.name = own, target, name
        self.defers_to = target.name  # what the report says of its rows for users with history
        self.history_only = getattr(own, "history_only", False)

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        has_history = (history != 0).any(1).cpu()
        target = self.target.scores(user_ids, history)
        if has_history.all():
            return target
        own = self.own.scores(user_ids, history).to(target.device, target.dtype)
        return torch.where(has_history.to(target.device)[:, None], target, own)


# What `transfer` and `run` say of a strategy that falls back.
FALLS_BACK = "not better than the target model on validation: users with target history get its scores"


def with_fallback(own: Scorer, checkpoint: Checkpoint, target_model: SequenceScorer | None) -> Scorer:
    """The scorer a strategy's `load` returns: `own`, or its fallback when the checkpoint says so (a
    checkpoint from before the fallback existed names no target model and gets `own`)."""
    if not checkpoint.config.get("falls_back") or target_model is None:
        return own
    return WarmFallback(own, target_model, own.name)
