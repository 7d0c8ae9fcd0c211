"""`mapping` (EMCDR, Man et al. 2017): an MLP from a user's source vector into the target model's space.

Trained on users active in both domains with target training history (cold-start test users have none,
so they never reach it). Two losses: `task` (default) scores the mapped vector against the frozen
target-only item table and maximises the likelihood of the user's target training items, as PTUPCDR
argues; `mse` regresses the target-only model's user vector, as EMCDR does. A user with target history is
served by the target-only SASRec itself; a cold user by the mapped source vector. Early stopping holds out
a seeded tenth of the training users as pseudo-cold users, ranked from their source vector alone.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xdrec.checkpoint import Checkpoint
from xdrec.embed import UserVectors
from xdrec.errors import XdrecError
from xdrec.evaluation import validation_metric
from xdrec.pretrain import SASRecScorer, load_sasrec
from xdrec.scoring import pad_left
from xdrec.training import Examples, train
from xdrec.transfer.base import TransferConfig, TransferContext, TransferResult, save_strategy

NAME = "mapping"
HOLDOUT = 0.1


class MappingModel(nn.Module):
    """source vector (B, Ds) -> target space (B, 1, D); the loss compares it with a frozen table."""

    def __init__(self, source_dim: int, table: Tensor) -> None:
        super().__init__()
        dim = table.shape[1]
        self.mlp = nn.Sequential(nn.Linear(source_dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim))
        # `task`: the target items (n + 1, D); `mse`: target user vectors, one row per training user.
        self.register_buffer("table", table.detach().clone(), persistent=False)

    def forward(self, inputs: Tensor, source_vector: Tensor) -> Tensor:
        return self.mlp(source_vector)[:, None, :]  # (B, 1, D); inputs only carry the batch shape

    def item_embeddings(self) -> Tensor:
        return self.table


def mse_loss(hidden: Tensor, labels: Tensor, table: Tensor) -> Tensor:
    """EMCDR: squared distance between the mapped vector and the user's target vector (row `labels`)."""
    keep = labels != 0
    return F.mse_loss(hidden[keep].float(), table[labels[keep]].float())


class MappingScorer:
    def __init__(self, mlp: nn.Module, vectors: UserVectors, target: SASRecScorer, name: str = NAME) -> None:
        self.mlp, self.vectors, self.target, self.name = mlp, vectors, target, name

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        device = self.target.device
        users = user_ids.cpu()
        mapped = self.mlp(self.vectors.vectors[users].to(device)) * self.vectors.known[users, None].to(device)
        own = self.target.model.user_vector(history[:, -self.target.model.cfg.max_len :].to(device))
        cold = (history != 0).sum(1).to(device) == 0  # (B,)
        user = torch.where(cold[:, None], mapped, own)  # (B, D)
        return user @ self.target.model.item_embeddings().T


def _split_users(sequences: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    order = np.random.default_rng(seed).permutation(sequences.height)
    n_hold = max(1, round(HOLDOUT * sequences.height)) if sequences.height > 10 else 0
    return sequences[np.sort(order[n_hold:])], sequences[np.sort(order[:n_hold])]


def fit(ctx: TransferContext, config: TransferConfig, progress: bool = True) -> TransferResult:
    data, target = ctx.dataset, ctx.target
    if not ctx.workspace.model_dir(config.target_model).exists():
        raise XdrecError(
            f"mapping needs the target model {config.target_model!r}: "
            f"run `xdrec pretrain --domain {target}` first"
        )
    target_model = load_sasrec(ctx.workspace, config.target_model, data, config.train.device)
    # Users with both a source vector and target training history.
    known = pl.Series("user_id", torch.nonzero(ctx.vectors.known).flatten().numpy())
    sequences = data.train_sequences(target).filter(pl.col("user_id").is_in(known.implode()))
    fit_users, held_out = _split_users(sequences, config.train.seed)
    users = torch.from_numpy(fit_users["user_id"].to_numpy().astype("int64"))
    if config.mapping_loss == "task":
        table = target_model.model.item_embeddings()
        pairs = fit_users.explode("items")  # one example per (user, target item)
        example_users = torch.from_numpy(pairs["user_id"].to_numpy().astype("int64"))
        labels = torch.from_numpy(pairs["items"].to_numpy().astype("int64"))[:, None]
        loss_fn = None
    else:
        with torch.no_grad():
            history = pad_left(fit_users["items"].to_list(), target_model.model.cfg.max_len)
            own = target_model.model.user_vector(history.to(target_model.device)).float()
        table = torch.cat([torch.zeros(1, own.shape[1], device=own.device), own])  # row 0: padding
        example_users, labels = users, torch.arange(1, len(users) + 1)[:, None]
        loss_fn = mse_loss
    torch.manual_seed(config.train.seed)
    model = MappingModel(ctx.vectors.dim, table)
    examples = Examples(
        torch.ones_like(labels), labels, {"source_vector": ctx.vectors.vectors[example_users]}
    )
    pseudo_cold = held_out.select(
        "user_id",
        history=pl.lit([], dtype=pl.List(pl.Int32)),
        targets=pl.col("items").list.unique().list.sort(),
        segment=pl.lit("cold"),
    )
    validate = validation_metric(
        pseudo_cold, data.n_items(target), lambda m: MappingScorer(m.mlp, ctx.vectors, target_model)
    )
    out = ctx.out_dir(NAME)
    result = train(
        model, examples, config.train, validate=validate, out_dir=out, loss_fn=loss_fn, progress=progress
    )
    save_strategy(
        ctx,
        NAME,
        model.mlp.state_dict(),
        config,
        result,
        source_dim=ctx.vectors.dim,
        dim=table.shape[1],
        mapping_loss=config.mapping_loss,
        target_model=config.target_model,
        embeddings=config.source_model,
        users=len(users),
        validation="pseudo-cold: a held-out tenth of the training users, ranked from source only",
    )
    return TransferResult(NAME, out, result, serves="cold (warm users get the target-only model)")


def load(checkpoint: Checkpoint, vectors: UserVectors, target: SASRecScorer) -> MappingScorer:
    dim, source_dim = checkpoint.config["dim"], checkpoint.config["source_dim"]
    model = MappingModel(source_dim, torch.zeros(1, dim))
    model.mlp.load_state_dict(checkpoint.state_dict())
    return MappingScorer(model.mlp.to(target.device).eval(), vectors, target)
