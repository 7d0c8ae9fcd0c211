"""`joint`: one SASRec over each user's merged source + target timeline, trained on both domains' next items.

The standard strong baseline of cross-domain sequential recommendation. Tokens 1..n_target are target
items and n_target+1..n_target+n_source source items; a domain embedding is added to each position. Every
position is labelled with the next item of the merged timeline, whichever domain it is in, and scored
against the items of that domain (`partitioned_ce_loss`), as C2DSR and ABXI train: source activity is
both context and training signal for the shared encoder. Only target items are candidates when it ranks.
A cold-start user's timeline is their source history alone. Source history is what
`Dataset.context_sequences` holds (as for `embed` and `bag`), merged by timestamp with the target items
the user is allowed to see at prediction time.

Until round 4 of issue 10 each position was labelled with the next *target* item only; on Grocery ->
Home_and_Kitchen the two-domain labels lift validation NDCG@10 from 0.0208 to 0.0222 (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import asdict

import polars as pl
import torch
from torch import Tensor, nn

from xdrec.checkpoint import Checkpoint
from xdrec.data.dataset import Dataset
from xdrec.devices import resolve_device
from xdrec.fit import Plan
from xdrec.models import BackboneConfig, backbone_kind, build_backbone, load_config
from xdrec.models.losses import choose_loss, partitioned_ce_loss
from xdrec.scoring import Scorer, pad_left
from xdrec.strategies.base import (
    ARCHITECTURE,
    TRAINING,
    ScoringInputs,
    Strategy,
    TransferConfig,
    TransferContext,
)
from xdrec.strategies.fallback import compare_with_target, with_fallback
from xdrec.training import Examples
from xdrec.validation import validation_metric


class JointModel(nn.Module):
    def __init__(self, cfg: BackboneConfig, n_target: int) -> None:
        super().__init__()
        self.n_target = n_target
        self.sasrec = build_backbone(cfg)  # any backbone; the attribute keeps its name for old checkpoints
        self.domain_emb = nn.Embedding(3, cfg.hidden, padding_idx=0)  # 0 padding, 1 target, 2 source

    def forward(self, inputs: Tensor) -> Tensor:
        domain = (inputs > 0).long() + (inputs > self.n_target).long()  # (B, L)
        return self.sasrec(inputs, extra=self.domain_emb(domain))

    def item_embeddings(self) -> Tensor:
        return self.sasrec.item_embeddings()  # (n_target + n_source + 1, D): both domains are trained

    def target_embeddings(self) -> Tensor:
        return self.sasrec.item_embeddings()[: self.n_target + 1]  # only target items are candidates


def timelines(data: Dataset, target: str, target_splits: tuple[str, ...]) -> pl.LazyFrame:
    """One row per interaction in the merged timeline: user_id, token, is_target, time-ordered per user."""
    n_target = data.n_items(target)
    is_target = pl.col("domain") == target
    return (
        data.interactions()
        .filter(
            (is_target & pl.col("split").is_in(list(target_splits)))
            | (~is_target & pl.col("split").is_in(list(data.context_splits())))
        )
        .with_columns(
            is_target=is_target,
            token=pl.when(is_target).then(pl.col("item_id")).otherwise(pl.col("item_id") + n_target),
        )
        .sort("user_id", "timestamp", "token")
        .select("user_id", "token", "is_target")
    )


def examples(data: Dataset, target: str, max_len: int) -> Examples:
    """Most recent max_len positions of each training timeline; label = the next token (0 at the end)."""
    rows = (
        timelines(data, target, ("train",))
        .with_columns(label=pl.col("token").shift(-1).over("user_id").fill_null(0))
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("token").tail(max_len), pl.col("label").tail(max_len))
        .filter(pl.col("label").list.max() > 0)
        .collect()
    )
    return Examples(pad_left(rows["token"].to_list(), max_len), pad_left(rows["label"].to_list(), max_len))


def scoring_timelines(data: Dataset, target: str, max_len: int) -> Tensor:
    """(n_users, 2 * max_len) every user's most recent timeline tokens, target items up to validation.

    The scorer keeps the target items in the history it is given and drops the others, so the same table
    serves validation (train history) and test (train + valid); twice max_len leaves room for both.
    """
    width = 2 * max_len
    rows = (
        timelines(data, target, ("train", "valid"))
        .group_by("user_id")
        .agg(pl.col("token").tail(width))
        .collect()
    )
    tokens = torch.zeros(data.users.height, width, dtype=torch.long)
    tokens[torch.from_numpy(rows["user_id"].to_numpy().astype("int64"))] = pad_left(
        rows["token"].to_list(), width
    )
    return tokens


class JointScorer:
    """Rebuilds each user's merged timeline from the target history it is given (valid or test time)."""

    def __init__(self, model: JointModel, tokens: Tensor, name: str = "joint") -> None:
        self.model, self.tokens, self.name = model, tokens, name

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        self.model.eval()
        n_target, device = self.model.n_target, self.model.domain_emb.weight.device
        tokens = self.tokens[user_ids.cpu()]  # (B, W)
        seen = torch.zeros(len(tokens), n_target + 1, dtype=torch.bool)  # (B, n_target + 1)
        seen.scatter_(1, history.cpu(), True)
        seen[:, 0] = False
        is_target = (tokens > 0) & (tokens <= n_target)
        keep = (tokens > n_target) | (is_target & seen.gather(1, tokens.clamp(max=n_target)))  # (B, W)
        # Stable sort on the keep flag moves the kept tokens right, in time order: left padding again.
        order = torch.sort(keep.int(), dim=1, stable=True).indices
        merged = (tokens * keep).gather(1, order)
        inputs = pad_left(merged, self.model.sasrec.cfg.max_len).to(device)
        return self.model(inputs)[:, -1] @ self.model.target_embeddings().T  # (B, n_target + 1)


class Joint(Strategy):
    name = "joint"
    serves = frozenset({"warm", "cold", "target-only"})
    needs = frozenset({"target_model"})  # what it is compared with on validation (fallback.py)
    tunes = (*ARCHITECTURE, *TRAINING)  # it builds a new backbone

    def build(self, ctx: TransferContext, config: TransferConfig, inputs: ScoringInputs) -> Plan:
        data, target = ctx.dataset, ctx.target
        assert inputs.target_model is not None
        n_target = data.n_items(target)
        cfg = config.architecture(ctx, n_target + data.n_items(ctx.source_domain))
        model = JointModel(cfg, n_target)
        train = config.train
        # Each label against its own domain's items when the full softmax fits; otherwise (a catalogue the
        # size of Books) the configured sampled loss over both domains' items.
        full = choose_loss(train.loss, cfg.n_items, train.batch_size, cfg.max_len).name == "ce"
        tokens = scoring_timelines(data, target, cfg.max_len)
        validate = validation_metric(
            data.eval_cases(target, "valid"), n_target, lambda m: JointScorer(m, tokens)
        )
        return Plan(
            model,
            examples(data, target, cfg.max_len),
            validate,
            loss_fn=partitioned_ce_loss(n_target) if full else None,
            finish=compare_with_target(data, target, inputs.target_model),
            record={"backbone": backbone_kind(cfg), "model": asdict(cfg), "n_target": n_target},
        )

    def load(self, checkpoint: Checkpoint, inputs: ScoringInputs) -> Scorer:
        config = checkpoint.config
        model = JointModel(load_config(config), config["n_target"])
        model.load_state_dict(checkpoint.state_dict())
        tokens = scoring_timelines(inputs.dataset, config["domain"], model.sasrec.cfg.max_len)
        own = JointScorer(model.to(resolve_device(inputs.device)).eval(), tokens)
        return with_fallback(own, checkpoint, inputs.target_model)
