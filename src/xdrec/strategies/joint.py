"""`joint`: one model of each user's merged two-domain timeline that scores both domains.

The model (`xdrec.models.merged`) reads source and target interactions merged by time, in one token space
(source items 1..n_source, target items n_source + 1..: same-time ties source first, as the mixed split
orders them), and keeps a view of each position per domain. Every position is labelled with the next
interaction of the merged timeline, whichever its domain, and scored in that domain's view against
uniformly drawn items of that domain (`two_domain_sampled_loss`), as ABXI and C2DSR train: source activity
is context and training signal at once. It is trained once and ranks each domain's items for that domain's
users: `evaluate` and `recommend` load it for either domain (config.json's `domains`).

What a user's timeline holds when it scores domain D: D's items the evaluation passes as history, and the
other domain's items `Dataset.context_sequences` allows (its training split; under the mixed split its
validation item too). A cold-start user's timeline is their other-domain history alone.

Users with history in a domain get its scores blended with that domain's single-domain SASRec's,
(1 - w) * SASRec + w * joint, with w chosen per domain on the domain's validation users from
`fallback.BLEND_WEIGHTS` (0: the SASRec alone, a fallback; 1: joint alone). On ABXI's data validation
chose 0.5 and 0.75 and the blend added 3-10% over either model alone (BENCHMARKS): the two models rank
differently enough that their product of experts beats both. Users without history in the domain get
joint's own scores.

Training: a fixed schedule (`--joint-epochs`, a one-epoch warm-up and a cosine decay; the checkpoint is
the epoch with the best validation NDCG@10, the mean of the domains'), then the blend weights are chosen,
then (`--refit`, the default) the model is trained again from its initial weights for that many
epochs with each user's validation item as one more label (`fit.Plan.refit`). The validation item is the
interaction just before the test item, and learning it is most of what the refit adds: on ABXI's data
it moved test NDCG@10 more than any architecture change did (BENCHMARKS). The test item is never trained
on. The papers (ABXI included) train on the training split only, so BENCHMARKS gives both numbers; the
weights before the refit are kept as `validation.safetensors`, which is that model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import polars as pl
import torch
from torch import Tensor, nn

from xdrec.checkpoint import Checkpoint
from xdrec.data.dataset import Dataset
from xdrec.devices import resolve_device
from xdrec.errors import OptionError
from xdrec.fit import Plan
from xdrec.models.losses import two_domain_sampled_loss
from xdrec.models.merged import MergedConfig, MergedTimeline
from xdrec.options import Choice, check, option
from xdrec.scoring import Scorer, pad_left
from xdrec.strategies.base import ScoringInputs, Strategy, TransferConfig, TransferContext
from xdrec.strategies.fallback import WarmBlend, choose_blend
from xdrec.training import Examples, TrainConfig, TrainResult
from xdrec.validation import validation_metric, validation_sample


@dataclass(frozen=True)
class JointOptions:
    """`joint`'s model and loss (its own, not the source model's: it is trained from scratch)."""

    hidden: int = option(128, "joint: hidden size.", low=8, tune=Choice((64, 128, 256)))
    blocks: int = option(1, "joint: Transformer blocks.", low=1, tune=Choice((1, 2)))
    heads: int = option(2, "joint: attention heads (must divide --joint-hidden).", low=1)
    dropout: float = option(
        0.3, "joint: dropout.", low=0, high=1, high_open=True, tune=Choice(low=0.1, high=0.6)
    )
    rank: int = option(8, "joint: rank of each domain's adapter of the merged state.", low=1)
    views: bool = option(False, "joint: add each domain's own-items encoding to its view (3x slower).")
    negatives: int = option(
        2048,
        "joint: negatives per domain and batch, drawn uniformly from its items.",
        low=1,
        tune=Choice((256, 512, 1024, 2048, 4096)),
    )
    weight_decay: float = option(
        0.5,
        "joint: AdamW weight decay (replaces --weight-decay).",
        low=0,
        tune=Choice(low=0.01, high=5.0, log=True),
    )
    max_len: int = option(50, "joint: the most recent interactions of the merged timeline it reads.", low=1)
    epochs: int = option(
        30, "joint: epochs of its learning-rate schedule (a one-epoch warm-up, then a cosine decay; "
        "--epochs caps it).", low=1,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check(self, "joint")
        if self.hidden % self.heads:
            raise OptionError(f"joint: heads ({self.heads}) must divide hidden ({self.hidden})")


def _token(data: Dataset) -> pl.Expr:
    """Source items keep their ids; target items follow them."""
    n_source = data.n_items(data.source)
    return (
        pl.when(pl.col("domain") == data.source)
        .then(pl.col("item_id"))
        .otherwise(pl.col("item_id") + n_source)
    )


def merged_timelines(data: Dataset, splits: dict[str, tuple[str, ...]]) -> pl.LazyFrame:
    """user_id, token (list, time order) of each user's rows of `splits[domain]` in each domain."""
    keep = pl.lit(False)
    for domain, names in splits.items():
        keep = keep | ((pl.col("domain") == domain) & pl.col("split").is_in(list(names)))
    return (
        data.interactions()
        .filter(keep)
        .with_columns(token=_token(data))
        .sort("user_id", "timestamp", "token")  # source tokens first at a tie, as the mixed split orders
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("token"))
    )


def examples(data: Dataset, max_len: int, splits: tuple[str, ...] = ("train",)) -> Examples:
    """Each user's merged timeline of `splits`, its most recent max_len positions; label = the next token."""
    rows = (
        merged_timelines(data, dict.fromkeys(data.domains, splits))
        .filter(pl.col("token").list.len() > 1)
        .collect()
    )
    tokens = rows["token"].to_list()
    return Examples(pad_left([t[:-1] for t in tokens], max_len), pad_left([t[1:] for t in tokens], max_len))


def scoring_timelines(data: Dataset, domain: str, max_len: int) -> Tensor:
    """(n_users, 2 * max_len) every user's most recent tokens: `domain`'s items up to validation and the
    other domain's context. The scorer keeps the `domain` items in the history it is given and drops the
    others, so one table serves validation and test; twice max_len leaves room for both."""
    width = 2 * max_len
    splits = {domain: ("train", "valid"), data.other(domain): data.context_splits()}
    rows = merged_timelines(data, splits).with_columns(pl.col("token").list.tail(width)).collect()
    tokens = torch.zeros(data.users.height, width, dtype=torch.long)
    tokens[torch.from_numpy(rows["user_id"].to_numpy().astype("int64"))] = pad_left(
        rows["token"].to_list(), width
    )
    return tokens


class JointScorer:
    """Scores one domain's items: rebuilds each user's merged timeline from the domain history it is given."""

    def __init__(self, model: MergedTimeline, tokens: Tensor, view: int, name: str = "joint") -> None:
        self.model, self.tokens, self.view, self.name = model, tokens, view, name
        self.first, self.last = model.tokens_of(view)

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        self.model.eval()
        device = self.model.domain_emb.weight.device
        tokens = self.tokens[user_ids.cpu()]  # (B, W)
        n_domain = self.last - self.first + 1
        seen = torch.zeros(len(tokens), n_domain + 1, dtype=torch.bool)  # (B, n_domain + 1): by item id
        seen.scatter_(1, history.cpu(), True)
        seen[:, 0] = False
        ours = (tokens >= self.first) & (tokens <= self.last)
        item = torch.where(ours, tokens - self.first + 1, 0)  # (B, W): the domain's item id, else 0
        keep = (~ours & (tokens > 0)) | (ours & seen.gather(1, item))  # (B, W)
        # Stable sort on the keep flag moves the kept tokens right, in time order: left padding again.
        order = torch.sort(keep.int(), dim=1, stable=True).indices
        merged = (tokens * keep).gather(1, order)
        inputs = pad_left(merged, self.model.cfg.max_len).to(device)
        return self.model.user_vectors(inputs, self.view) @ self.model.domain_table(self.view).T


def _view(data: Dataset, domain: str) -> int:
    return 0 if domain == data.source else 1


@dataclass(frozen=True)
class _Validator:
    cases: pl.DataFrame  # the domain's validation users early stopping ranks
    scorer: Callable[[nn.Module], JointScorer]  # the model as the domain's scorer
    validate: Callable[[nn.Module], float]  # the model's NDCG@10 on `cases`


def _validators(data: Dataset, max_len: int) -> dict[str, _Validator]:
    """Per domain with validation users."""
    validators = {}
    for domain in data.domains:
        cases = validation_sample(data.eval_cases(domain, "valid"))
        scorer = partial(
            JointScorer, tokens=scoring_timelines(data, domain, max_len), view=_view(data, domain)
        )
        validate = validation_metric(cases, data.n_items(domain), scorer)
        if validate is not None:
            validators[domain] = _Validator(cases, scorer, validate)
    return validators


class Joint(Strategy):
    name = "joint"
    serves = frozenset({"warm", "cold", "target-only"})
    needs = frozenset({"target_model"})  # each domain's single-domain model, its blend partner (fallback.py)
    both_domains = True

    Options = JointOptions
    tunes = ("lr", "batch_size")  # its architecture is its own options

    def train_config(self, config: TransferConfig) -> TrainConfig:
        options = config.options(JointOptions)
        return replace(
            config.train,
            weight_decay=options.weight_decay,
            epochs=min(options.epochs, config.train.epochs),
            schedule="cosine",
        )

    def build(self, ctx: TransferContext, config: TransferConfig, inputs: ScoringInputs) -> Plan:
        data = ctx.dataset
        assert inputs.target_model is not None
        options = config.options(JointOptions)
        cfg = MergedConfig(
            data.n_items(data.source), data.n_items(data.target), options.hidden, options.blocks,
            options.heads, options.max_len, options.dropout, options.rank, options.views,
        )  # fmt: skip
        model = MergedTimeline(cfg)
        singles = {ctx.source_domain: ctx.source, ctx.target: inputs.target_model}
        validators = _validators(data, cfg.max_len)

        def validate(trained: nn.Module) -> float:  # the domains' mean: one model serves both
            return sum(v.validate(trained) for v in validators.values()) / max(len(validators), 1)

        def blend(trained: nn.Module, _: TrainResult) -> dict[str, Any]:
            chosen = {
                d: choose_blend(v.scorer(trained), singles[d], v.cases, data.n_items(d))
                for d, v in validators.items()
            }
            behind = [d for d in data.domains if d in chosen and chosen[d][0] == 0]
            return {
                "falls_back": ctx.target in behind,
                "falls_back_in": behind,
                "blend_weights": {d: weight for d, (weight, _) in chosen.items()},
                "valid_by_weight": {d: tried for d, (_, tried) in chosen.items()},
            }

        loss_seed = torch.Generator().manual_seed(config.train.seed + 1)
        return Plan(
            model,
            examples(data, cfg.max_len),
            validate,
            loss_fn=two_domain_sampled_loss(cfg.n_a, cfg.n_items, options.negatives, loss_seed),
            finish=blend,
            refit=examples(data, cfg.max_len, ("train", "valid")),
            record={"model": asdict(cfg), "domains": list(data.domains)},
        )

    def load(self, checkpoint: Checkpoint, inputs: ScoringInputs) -> Scorer:
        config = checkpoint.config
        data = inputs.dataset
        domain = inputs.domain or config["domain"]
        model = MergedTimeline(MergedConfig(**config["model"]))
        model.load_state_dict(checkpoint.state_dict())
        model = model.to(resolve_device(inputs.device)).eval()
        own = JointScorer(model, scoring_timelines(data, domain, model.cfg.max_len), _view(data, domain))
        fallback = 0.0 if domain in config.get("falls_back_in", []) else 1.0  # trained before blends
        weight = config.get("blend_weights", {}).get(domain, fallback)
        if weight == 1 or inputs.partner is None:
            return own
        return WarmBlend(own, inputs.partner, own.name, weight)
