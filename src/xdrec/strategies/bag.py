"""`bag`: a softmax over target items from the bag of a user's items, alone for cold users and blended
with the target-only SASRec for warm ones.

The model (a cross-domain Mult-DAE): the user is the sum of learned embeddings of their distinct source
items and target items, divided by the square root of their count (a linear map of the L2-normalised
binary bag); target items are scored by a learned table plus a bias that starts at log popularity. It is
trained on whole target histories, not one next item: each user's training target items are the labels
of one multinomial likelihood, which is what a cold user is judged on. Training drops input items at
random (`dropout`), and a user's whole target input with probability `cold_rate`, so one model learns to
rank from source items alone (a cold user) and from both (a warm user).

Scoring: a cold user (no target history) gets the bag model's scores; a warm user gets
    log_softmax(target-only SASRec) + weight * n ** -decay * log_softmax(bag model),
a late fusion of the sequence model (what comes next) and the bag model (the user's taste across both
domains), where n is the number of target items the user has: the fewer, the more the bag counts (a user
with one target item is nearly cold). Early stopping ranks a seeded tenth of the training users as
pseudo-cold users (as `mapping` does); `weight` and `decay` are then chosen together on the warm users'
validation split from WEIGHTS x DECAYS (weight 0 keeps target-only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xdrec.checkpoint import Checkpoint
from xdrec.data.dataset import Dataset
from xdrec.evaluation import per_user_metrics
from xdrec.fit import Plan
from xdrec.options import Choice, check, option
from xdrec.scoring import Precomputed, pad_left
from xdrec.sequence_scorer import SequenceScorer
from xdrec.strategies.base import ScoringInputs, Strategy, TransferConfig, TransferContext
from xdrec.strategies.fallback import CHUNK  # validation users per chunk when choosing a blend
from xdrec.strategies.mapping import pseudo_cold_cases, split_pseudo_cold
from xdrec.training import Examples, LossFn, TrainConfig, TrainResult
from xdrec.validation import validation_metric, validation_sample


@dataclass(frozen=True)
class BagOptions:
    """`bag`'s model."""

    dim: int = option(64, "bag: embedding size.", low=1, tune=Choice((32, 64, 128, 256)))
    dropout: float = option(
        0.3, "bag: share of input items dropped in training.", low=0, high=1, high_open=True,
        tune=Choice(low=0.0, high=0.6),
    )  # fmt: skip
    cold_rate: float = option(
        0.5, "bag: share of training users whose whole target input is dropped.", low=0, high=1,
        tune=Choice(low=0.0, high=0.9),
    )  # fmt: skip
    # False: source items only (the cold-start reference's softmax-bag)
    target_input: bool = option(
        True, "bag: read the user's target items too (--no-bag-target-input: source only)."
    )
    weight_decay: float = option(
        1.0, "bag: AdamW weight decay (replaces --weight-decay).", low=0,
        tune=Choice(low=1e-3, high=3.0, log=True),
    )  # fmt: skip
    members: int = option(1, "bag: models trained side by side, their log-probabilities averaged.", low=1)

    def __post_init__(self) -> None:
        check(self, "bag")


# Most recent distinct items per domain a user's bag keeps: as SASRec's default max_len, so the training
# examples take at most twice the memory of its windows (on food_kitchen no user has more than 43).
MAX_ITEMS = 50
# Blend weights and decays tried on the warm validation users; weight 0 is target-only alone.
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DECAYS = (0.0, 0.5, 1.0)
# The (weight, decay) pairs tried on validation; weight 0 (target-only alone) needs no decay.
BLENDS = [(w, d) for w in WEIGHTS for d in (DECAYS if w else (0.0,))]


class BagModel(nn.Module):
    """Tokens 1..n_source are source items, n_source + t is target item t; 0 is padding.

    `config.members` independent bag models (own weights and dropout masks, one batch order) side by side:
    forward(tokens (B, L)) -> (B, 1, K * (dim + 1)): each member's user vector with a constant 1
    appended, and `item_embeddings()` -> (n_target + 1, K * (dim + 1)): each member's table with its bias
    as the last column, so `member_logits` scores every member in one product. With one member the
    parameters are those of a single model (so K = 1 loads a checkpoint from before members existed).
    """

    def __init__(self, n_source: int, n_target: int, config: BagOptions, item_counts: Tensor) -> None:
        super().__init__()
        self.n_source, self.n_target, self.config = n_source, n_target, config
        k, dim = config.members, config.dim
        self.inputs = nn.Embedding(n_source + n_target + 1, k * dim, padding_idx=0)
        self.table = nn.Parameter(torch.empty(n_target + 1, k * dim))
        self.bias = nn.Parameter(torch.log1p(item_counts.float())[:, None].repeat(1, k).flatten())
        # As nn.Linear initialises a (bag -> dim) and a (dim -> items) layer: small inputs, wider outputs.
        bound = 1 / math.sqrt(n_source + 1 + (n_target if config.target_input else 0))
        nn.init.uniform_(self.inputs.weight, -bound, bound)
        nn.init.uniform_(self.table, -1 / math.sqrt(dim), 1 / math.sqrt(dim))
        with torch.no_grad():
            self.inputs.weight[0].zero_()

    def forward(self, tokens: Tensor) -> Tensor:
        k, dim = self.config.members, self.config.dim
        keep = (tokens != 0)[..., None].expand(*tokens.shape, k)  # (B, L, K)
        if self.training:
            keep = keep & (torch.rand(keep.shape, device=tokens.device) >= self.config.dropout)
            cold = torch.rand(len(tokens), 1, k, device=tokens.device) < self.config.cold_rate  # (B, 1, K)
            keep = keep & ~(cold & (tokens > self.n_source)[..., None])
        embedded = self.inputs(tokens).view(*tokens.shape, k, dim)  # (B, L, K, D)
        summed = (embedded * keep[..., None]).sum(1)  # (B, K, D)
        user = summed / keep.sum(1)[..., None].clamp(min=1).sqrt()
        user = torch.cat([user, user.new_ones(len(user), k, 1)], dim=2)  # (B, K, D + 1)
        return user.view(len(user), 1, k * (dim + 1))

    def item_embeddings(self) -> Tensor:
        k, dim = self.config.members, self.config.dim
        rows = torch.cat([self.table.view(-1, k, dim), self.bias.view(-1, k, 1)], dim=2)  # (V, K, D + 1)
        return rows.view(len(rows), k * (dim + 1))

    def log_probs(self, tokens: Tensor) -> Tensor:
        """(B, L) tokens -> (B, n_target + 1) the members' mean log-probabilities of the target items (the
        log of their normalised geometric mean, up to a constant per user); column 0 is -inf."""
        logits = member_logits(self(tokens)[:, -1], self.item_embeddings(), self.config.members)
        return F.log_softmax(logits, 2).mean(1)


def member_logits(hidden: Tensor, table: Tensor, members: int) -> Tensor:
    """(B, K * E) users, (V, K * E) items -> (B, K, V) each member's logits; column 0 (padding) -inf."""
    users, items = hidden.float().view(len(hidden), members, -1), table.float().view(len(table), members, -1)
    logits = torch.einsum("bke,vke->bkv", users, items)
    logits[..., 0] = -torch.inf
    return logits


def multinomial_loss(members: int) -> LossFn:
    """The loss of `members` side-by-side models: the mean over members and users of the mean negative
    log-likelihood of each user's target items (`labels`, 0 = none)."""

    def multinomial_loss(hidden: Tensor, labels: Tensor, table: Tensor) -> Tensor:
        log_p = F.log_softmax(member_logits(hidden[:, -1], table, members), 2)  # (B, K, V)
        mask = labels != 0
        picked = log_p.gather(2, labels[:, None].expand(-1, members, -1)).where(mask[:, None], 0.0)
        per_user = picked.sum(2) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, K); padding's -inf out
        return -per_user[mask.any(1)].mean()

    return multinomial_loss


def distinct_recent(sequences: pl.DataFrame) -> pl.DataFrame:
    """user_id, items -> user_id, items: each distinct item once (at its last time), at most MAX_ITEMS."""
    return sequences.with_columns(
        pl.col("items").list.reverse().list.unique(maintain_order=True).list.head(MAX_ITEMS).list.reverse()
    )


def tokens_for(model: BagModel, source: Tensor, history: Tensor) -> Tensor:
    """A user's distinct source tokens (B, Ws) and left-padded target history (B, L) -> (B, Ws + L)
    tokens, each distinct item once (as in training; the bag ignores order and padding)."""
    if not model.config.target_input:
        return source
    target = history[:, -MAX_ITEMS:]
    tokens = torch.cat([source, torch.where(target != 0, target + model.n_source, 0)], dim=1).sort(1).values
    tokens[:, 1:] = tokens[:, 1:].masked_fill(tokens[:, 1:] == tokens[:, :-1], 0)  # repeats -> padding
    return tokens


class BagScorer:
    """Cold users: the bag model; warm users: target-only's log-softmax + a weight x the bag model's."""

    def __init__(
        self,
        model: BagModel,
        source: Tensor,
        target: SequenceScorer | None = None,
        weight: float = 0.0,
        decay: float = 0.0,
        name: str = "bag",
    ) -> None:
        self.model, self.source, self.target, self.name = model, source, target, name
        self.weight, self.decay = weight, decay
        # Blend weight 0: users with target history get target-only's scores (the report says so).
        self.defers_to = target.name if target is not None and weight == 0 else None

    @property
    def device(self) -> torch.device:
        return self.model.table.device

    @torch.no_grad()
    def parts(self, user_ids: Tensor, history: Tensor) -> tuple[Tensor, Tensor | None]:
        """(bag log-probs, target-only log-probs or None), each (B, n_target + 1)."""
        self.model.eval()
        history = history.to(self.device)
        source = self.source[user_ids.cpu()].to(self.device)
        bag = self.model.log_probs(tokens_for(self.model, source, history))
        if self.target is None:
            return bag, None
        return bag, F.log_softmax(self.target.scores(user_ids, history).float(), 1)

    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        bag, own = self.parts(user_ids, history)
        return bag if own is None else blend(bag, own, history.to(bag.device), self.weight, self.decay)


def blend(bag: Tensor, own: Tensor, history: Tensor, weight: float, decay: float) -> Tensor:
    """Cold rows (empty history): `bag`; the others: own + weight * n ** -decay * bag."""
    n = (history != 0).sum(1, keepdim=True)  # (B, 1)
    warm = own + weight * n.clamp(min=1).float() ** -decay * bag
    return torch.where(n == 0, bag, warm)


def choose_blend(
    scorer: BagScorer, cases: pl.DataFrame, n_items: int
) -> tuple[tuple[float, float], dict[str, float]]:
    """(weight, decay) with the best mean NDCG@10 on the warm validation `cases` (a seeded sample of at
    most VALIDATION_USERS, as early stopping ranks; ties: the smaller), and every pair's value."""
    cases = validation_sample(cases)
    sums = dict.fromkeys(BLENDS, 0.0)
    for start in range(0, cases.height, CHUNK):
        chunk = cases[start : start + CHUNK]
        users = torch.from_numpy(chunk["user_id"].to_numpy().astype("int64"))
        history = pad_left(chunk["history"].to_list())
        bag, own = scorer.parts(users, history)
        assert own is not None
        for w, d in BLENDS:
            given = Precomputed(users, blend(bag, own, history.to(bag.device), w, d), "blend")
            sums[w, d] += float(per_user_metrics(given, chunk, n_items)["NDCG@10"].sum())
    means = {pair: total / max(cases.height, 1) for pair, total in sums.items()}
    best = max(BLENDS, key=lambda pair: (means[pair], -pair[0], -pair[1]))
    return best, {f"weight={w:g} decay={d:g}": v for (w, d), v in means.items()}


# ------------------------------------------------------------------------------------ the strategy


def source_tokens(data: Dataset, source_domain: str) -> Tensor:
    """(n_users, W) left-padded source-item tokens of every user's source bag (empty rows: none)."""
    bags = distinct_recent(data.context_sequences(source_domain))
    out = torch.zeros(data.users.height, max(1, int(bags["items"].list.len().max() or 0)), dtype=torch.long)
    rows = torch.from_numpy(bags["user_id"].to_numpy().astype("int64"))
    out[rows] = pad_left(bags["items"], out.shape[1])
    return out


def examples(data: Dataset, source_domain: str, users: pl.DataFrame, model: BagModel) -> Examples:
    """One example per user in `users` (user_id, items: target training sequence): tokens = the source
    bag and the target bag, labels = the target bag; each left-padded, so the trainer can trim columns."""
    target = distinct_recent(users)
    source = distinct_recent(data.context_sequences(source_domain)).rename({"items": "source"})
    rows = target.join(source, on="user_id", how="left").with_columns(
        pl.col("source").fill_null(pl.lit([], dtype=pl.List(pl.Int32)))
    )
    tokens = pl.col("source")
    if model.config.target_input:
        tokens = pl.concat_list("source", pl.col("items").list.eval(pl.element() + model.n_source))
    rows = rows.with_columns(tokens=tokens)
    width = int(max(rows["tokens"].list.len().max() or 1, rows["items"].list.len().max() or 1))
    return Examples(pad_left(rows["tokens"], width), pad_left(rows["items"], width))


class Bag(Strategy):
    name = "bag"
    serves = frozenset({"warm", "cold"})
    needs = frozenset({"target_model"})

    Options = BagOptions
    tunes = ("lr", "batch_size")  # its own weight decay replaces the training one

    def train_config(self, config: TransferConfig) -> TrainConfig:
        return replace(config.train, weight_decay=config.options(BagOptions).weight_decay)

    def build(self, ctx: TransferContext, config: TransferConfig, inputs: ScoringInputs) -> Plan:
        data, target, target_model = ctx.dataset, ctx.target, inputs.target_model
        assert target_model is not None
        source = source_tokens(data, ctx.source_domain)
        n_target = data.n_items(target)
        model = BagModel(
            data.n_items(ctx.source_domain),
            n_target,
            config.options(BagOptions),
            torch.as_tensor(data.item_counts(target)),
        )
        # Users with source and target training history; a seeded tenth of them is held out as pseudo-cold.
        has_source = pl.Series("user_id", torch.nonzero((source != 0).any(1)).flatten().numpy())
        sequences = data.train_sequences(target).filter(pl.col("user_id").is_in(has_source.implode()))
        fit_users, held_out = split_pseudo_cold(sequences, config.train.seed)
        warm = data.eval_cases(target, "valid").filter(pl.col("segment") == "warm")

        def choose(trained: torch.nn.Module, _: TrainResult) -> dict[str, Any]:
            assert isinstance(trained, BagModel)
            scorer = BagScorer(trained.to(target_model.device), source, target_model)
            (weight, decay), tried = choose_blend(scorer, warm, n_target)
            return {"weight": weight, "decay": decay, "blends_tried": tried, "falls_back": weight == 0}

        return Plan(
            model,
            examples(data, ctx.source_domain, fit_users, model),
            validation_metric(pseudo_cold_cases(held_out), n_target, lambda m: BagScorer(m, source)),
            loss_fn=multinomial_loss(config.options(BagOptions).members),
            finish=choose,
            record={
                "source_domain": ctx.source_domain,
                "users": fit_users.height,
                "validation": "epochs: pseudo-cold users (a held-out tenth of the training users, ranked "
                "from source only); weight and decay: the warm users of the valid split",
            },
        )

    def load(self, checkpoint: Checkpoint, inputs: ScoringInputs) -> BagScorer:
        partner = inputs.partner  # the target model as served: bag's scores add to its log-softmax
        assert partner is not None
        config, data = checkpoint.config, inputs.dataset
        source_domain, target = config["source_domain"], config["domain"]
        n_target = data.n_items(target)
        bag = BagOptions(**config["bag"])
        model = BagModel(data.n_items(source_domain), n_target, bag, torch.zeros(n_target + 1))
        model.load_state_dict(checkpoint.state_dict())
        device = partner.device
        return BagScorer(
            model.to(device).eval(),
            source_tokens(data, source_domain),
            partner,
            config["weight"],
            config["decay"],
        )
