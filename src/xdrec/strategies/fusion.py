"""`fusion`: a target SASRec conditioned on the user's frozen source vector, given as a first token.

Every training sequence starts with a prefix slot whose input is a learned projection of the user's source
vector (a learned "no source" embedding for users without one): [P, i1, ..., i(n-1)] -> [i1, ..., in].
The prefix position predicts the first target item from the source alone, which is exactly the cold-start
situation; so a user with no target history is just the prefix, and one model serves warm and cold users.
"""

from __future__ import annotations

from dataclasses import asdict

import polars as pl
import torch
from torch import Tensor, nn

from xdrec.checkpoint import Checkpoint
from xdrec.devices import resolve_device
from xdrec.embedding import UserVectors
from xdrec.fit import Plan
from xdrec.models import BackboneConfig, backbone_kind, build_backbone, load_config
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


class FusionModel(nn.Module):
    def __init__(self, cfg: BackboneConfig, source_dim: int) -> None:
        super().__init__()
        self.slot = cfg.n_items  # the prefix slot's id: one past the target items
        self.sasrec = build_backbone(cfg)  # any backbone; the attribute keeps its name for old checkpoints
        self.project = nn.Linear(source_dim, cfg.hidden)

    def forward(self, inputs: Tensor, source_vector: Tensor, source_known: Tensor) -> Tensor:
        """inputs (B, L) with the slot before the items; source_vector (B, Ds); source_known (B,) bool."""
        prefix = self.project(source_vector) * source_known[:, None].to(source_vector.dtype)  # (B, D)
        extra = (inputs == self.slot)[..., None].to(prefix.dtype) * prefix[:, None, :]  # (B, L, D)
        return self.sasrec(inputs, extra=extra)

    def item_embeddings(self) -> Tensor:
        return self.sasrec.item_embeddings()[: self.slot]  # (n_target + 1, D): the slot is never a candidate


def with_slot(history: Tensor, slot: int, width: int) -> Tensor:
    """(B, L) left-padded items -> (B, width): the last width-1 items with the slot just before them."""
    items = pad_left(history, width - 1)  # (B, width - 1)
    out = torch.nn.functional.pad(items, (1, 0))  # (B, width)
    first = width - 1 - (items != 0).sum(1)  # (B,) column of the slot
    out[torch.arange(len(out)), first] = slot
    return out


class FusionScorer:
    def __init__(self, model: FusionModel, vectors: UserVectors, name: str = "fusion") -> None:
        self.model, self.vectors, self.name = model, vectors, name

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        self.model.eval()
        device = self.model.project.weight.device
        inputs = with_slot(history, self.model.slot, self.model.sasrec.cfg.max_len).to(device)
        users = user_ids.cpu()
        hidden = self.model(
            inputs, self.vectors.vectors[users].to(device), self.vectors.known[users].to(device)
        )
        return hidden[:, -1] @ self.model.item_embeddings().T  # (B, n_target + 1)


def examples(sequences: pl.DataFrame, vectors: UserVectors, slot: int, max_len: int) -> Examples:
    """Target sequences -> [slot, i1..i(n-1)] inputs, [i1..in] labels, source vectors as extras."""
    tails = sequences["items"].list.tail(max_len).to_list()
    labels = pad_left(tails, max_len)  # (N, max_len)
    inputs = with_slot(pad_left([t[:-1] for t in tails], max_len), slot, max_len)
    users = torch.from_numpy(sequences["user_id"].to_numpy().astype("int64"))
    return Examples(
        inputs, labels, {"source_vector": vectors.vectors[users], "source_known": vectors.known[users]}
    )


class Fusion(Strategy):
    name = "fusion"
    serves = frozenset({"warm", "cold", "target-only"})
    needs = frozenset({"source_vectors", "target_model"})  # the target model: fallback.py
    tunes = (*ARCHITECTURE, *TRAINING)  # it builds a new backbone

    def build(self, ctx: TransferContext, config: TransferConfig, inputs: ScoringInputs) -> Plan:
        data, target, vectors = ctx.dataset, ctx.target, ctx.vectors
        assert inputs.target_model is not None
        cfg = config.architecture(ctx, data.n_items(target) + 1)  # + the slot
        model = FusionModel(cfg, vectors.dim)
        validate = validation_metric(
            data.eval_cases(target, "valid"), data.n_items(target), lambda m: FusionScorer(m, vectors)
        )
        return Plan(
            model,
            examples(data.train_sequences(target), vectors, model.slot, cfg.max_len),
            validate,
            finish=compare_with_target(data, target, inputs.target_model, lambda m: FusionScorer(m, vectors)),
            # refitted as target-only is (`--refit`): the model it is compared with when served
            refit=examples(data.history_sequences(target, "test"), vectors, model.slot, cfg.max_len),
            record={"backbone": backbone_kind(cfg), "model": asdict(cfg), "source_dim": vectors.dim},
        )

    def load(self, checkpoint: Checkpoint, inputs: ScoringInputs) -> Scorer:
        assert inputs.vectors is not None
        config = checkpoint.config
        model = FusionModel(load_config(config), config["source_dim"])
        model.load_state_dict(checkpoint.state_dict())
        own = FusionScorer(model.to(resolve_device(inputs.device)).eval(), inputs.vectors)
        return with_fallback(own, checkpoint, inputs.partner)
