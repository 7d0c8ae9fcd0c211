"""`mapping` (EMCDR, Man et al. 2017): an MLP from a user's source vector into the target model's space.

Trained on users active in both domains with target training history (cold-start test users have none,
so they never reach it). Two losses: `task` (default) scores the mapped vector against the frozen
target-only item table and maximises the likelihood of the user's target training items, as PTUPCDR
argues; `mse` regresses the target-only model's user vector, as EMCDR does. A user with target history is
served by the target-only SASRec itself; a cold user by the mapped source vector. Early stopping holds out
a seeded tenth of the training users as pseudo-cold users, ranked from their source vector alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xdrec.checkpoint import Checkpoint
from xdrec.embedding import UserVectors
from xdrec.evaluation import COLD_SEGMENT
from xdrec.fit import Plan
from xdrec.options import Choice, check, option
from xdrec.scoring import pad_left
from xdrec.sequence_scorer import SequenceScorer
from xdrec.strategies.base import ScoringInputs, Strategy, TransferConfig, TransferContext
from xdrec.training import Examples
from xdrec.validation import validation_metric

HOLDOUT = 0.1


@dataclass(frozen=True)
class MappingOptions:
    loss: str = option(
        "task",
        "mapping: task (likelihood of target items) or mse (EMCDR).",
        choices=("task", "mse"),
        tune=Choice(("task", "mse")),
    )

    def __post_init__(self) -> None:
        check(self, "mapping")


class MappingModel(nn.Module):
    """source vector (B, Ds) -> target space (B, 1, D); the loss compares it with a frozen table.

    With `item_bias` (the task loss) each target item also gets a learned bias, carried as one extra
    dimension (a constant 1 in the user vector, the bias in the table) so the trainer's losses apply
    unchanged: a cold user's score is taste plus how likely the item is for anyone, which the frozen
    table of the target model (trained with histories) does not encode on its own.
    """

    def __init__(self, source_dim: int, table: Tensor, item_bias: bool = False) -> None:
        super().__init__()
        dim = table.shape[1]
        self.mlp = nn.Sequential(nn.Linear(source_dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim))
        # `task`: the target items (n + 1, D); `mse`: target user vectors, one row per training user.
        self.register_buffer("table", table.detach().clone(), persistent=False)
        self.bias = nn.Parameter(torch.zeros(table.shape[0])) if item_bias else None

    def forward(self, inputs: Tensor, source_vector: Tensor) -> Tensor:
        mapped = self.mlp(source_vector)  # (B, D); inputs only carry the batch shape
        if self.bias is not None:
            mapped = torch.cat([mapped, mapped.new_ones(len(mapped), 1)], dim=1)  # (B, D + 1)
        return mapped[:, None, :]

    def item_embeddings(self) -> Tensor:
        if self.bias is None:
            return self.table
        return torch.cat([self.table, self.bias[:, None]], dim=1)  # (n + 1, D + 1)


def mse_loss(hidden: Tensor, labels: Tensor, table: Tensor) -> Tensor:
    """EMCDR: squared distance between the mapped vector and the user's target vector (row `labels`)."""
    keep = labels != 0
    return F.mse_loss(hidden[keep].float(), table[labels[keep]].float())


class MappingScorer:
    """Cold users (no target history): the mapped source vector, scored against the item table of the
    target model the mapping was trained on (`target`); the others: the target model as it is served
    (`served`, default `target`: a refitted one has other item vectors but the same kind of scores)."""

    def __init__(
        self,
        model: MappingModel,
        vectors: UserVectors,
        target: SequenceScorer,
        name: str = "mapping",
        served: SequenceScorer | None = None,
    ) -> None:
        self.model, self.vectors, self.target, self.name = model, vectors, target, name
        self.served = served if served is not None else target
        self.defers_to = self.served.name  # users with target history get its scores (the report says so)

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        device = self.target.device
        users = user_ids.cpu()
        source = self.vectors.vectors[users].to(device) * self.vectors.known[users, None].to(device)
        table = self.target.model.item_embeddings()  # (n + 1, D)
        mapped = self.model.mlp(source) @ table.T  # (B, n + 1)
        if self.model.bias is not None:
            mapped = mapped + self.model.bias
        own = self.served.scores(user_ids, history).to(device)  # (B, n + 1)
        cold = (history != 0).sum(1).to(device) == 0  # (B,)
        return torch.where(cold[:, None], mapped, own)


def split_pseudo_cold(sequences: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Target training sequences -> (the users to fit on, a seeded HOLDOUT of pseudo-cold users)."""
    order = np.random.default_rng(seed).permutation(sequences.height)
    n_hold = max(1, round(HOLDOUT * sequences.height)) if sequences.height > 10 else 0
    return sequences[np.sort(order[n_hold:])], sequences[np.sort(order[:n_hold])]


def pseudo_cold_cases(sequences: pl.DataFrame) -> pl.DataFrame:
    """Evaluation cases that rank each user's target training items from their source history alone."""
    return sequences.select(
        "user_id",
        history=pl.lit([], dtype=pl.List(pl.Int32)),
        targets=pl.col("items").list.unique().list.sort(),
        segment=pl.lit(COLD_SEGMENT),
    )


class Mapping(Strategy):
    name = "mapping"
    serves = frozenset({"cold"})  # warm users get the target-only model itself
    needs = frozenset({"source_vectors", "target_model"})

    Options = MappingOptions

    def record(self, config: TransferConfig) -> dict[str, Any]:
        return {"mapping_loss": config.options(MappingOptions).loss}  # config.json's name since its start

    def build(self, ctx: TransferContext, config: TransferConfig, inputs: ScoringInputs) -> Plan:
        data, target, vectors, target_model = ctx.dataset, ctx.target, ctx.vectors, inputs.target_model
        assert target_model is not None
        # Users with both a source vector and target training history.
        known = pl.Series("user_id", torch.nonzero(vectors.known).flatten().numpy())
        sequences = data.train_sequences(target).filter(pl.col("user_id").is_in(known.implode()))
        fit_users, held_out = split_pseudo_cold(sequences, config.train.seed)
        task = config.options(MappingOptions).loss == "task"
        if task:
            table = target_model.model.item_embeddings()
            pairs = fit_users.explode("items")  # one example per (user, target item)
            example_users = torch.from_numpy(pairs["user_id"].to_numpy().astype("int64"))
            labels = torch.from_numpy(pairs["items"].to_numpy().astype("int64"))[:, None]
            loss_fn = None
        else:
            with torch.no_grad():
                history = pad_left(fit_users["items"], target_model.model.cfg.max_len)
                own = target_model.model.user_vector(history.to(target_model.device)).float()
            table = torch.cat([torch.zeros(1, own.shape[1], device=own.device), own])  # row 0: padding
            example_users = torch.from_numpy(fit_users["user_id"].to_numpy().astype("int64"))
            labels = torch.arange(1, fit_users.height + 1)[:, None]  # row u of the table: user u's vector
            loss_fn = mse_loss
        model = MappingModel(vectors.dim, table, item_bias=task)
        if model.bias is not None:
            # Start from popularity (log training counts): the mapped taste only has to learn the difference.
            with torch.no_grad():
                model.bias.copy_(torch.log1p(torch.as_tensor(data.item_counts(target), dtype=torch.float32)))
        validate = validation_metric(
            pseudo_cold_cases(held_out),
            data.n_items(target),
            lambda m: MappingScorer(m, vectors, target_model),
        )
        return Plan(
            model,
            Examples(torch.ones_like(labels), labels, {"source_vector": vectors.vectors[example_users]}),
            validate,
            loss_fn=loss_fn,
            record={
                "source_dim": vectors.dim,
                "dim": table.shape[1],
                "users": fit_users.height,
                "validation": "pseudo-cold: a held-out tenth of the training users, ranked from source only",
            },
        )

    def load(self, checkpoint: Checkpoint, inputs: ScoringInputs) -> MappingScorer:
        assert inputs.vectors is not None and inputs.target_model is not None
        config, target = checkpoint.config, inputs.target_model
        table = target.model.item_embeddings().detach()
        model = MappingModel(config["source_dim"], table, item_bias=config["mapping_loss"] == "task")
        model.load_state_dict(checkpoint.state_dict())
        return MappingScorer(model.to(target.device).eval(), inputs.vectors, target, served=inputs.partner)
