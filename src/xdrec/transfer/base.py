"""What every transfer strategy shares: its configuration, its inputs, and small tensor helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from xdrec.checkpoint import BUILT_FROM, dataset_identity, save_checkpoint
from xdrec.data.dataset import Dataset
from xdrec.embed import UserVectors
from xdrec.pretrain import SASRecScorer
from xdrec.training import TrainConfig, TrainResult
from xdrec.workspace import Workspace

METRIC = "NDCG@10"


@dataclass(frozen=True)
class TransferConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    mapping_loss: Literal["task", "mse"] = "task"  # mapping: a loss on target items (PTUPCDR) or EMCDR's MSE
    source_model: str = "source-only"
    target_model: str = "target-only"


@dataclass(frozen=True)
class TransferContext:
    """The trained pieces a strategy builds on."""

    workspace: Workspace
    dataset: Dataset
    source: SASRecScorer  # the pretrained source-domain SASRec (frozen)
    vectors: UserVectors  # its user vectors, from `xdrec embed`

    @property
    def target(self) -> str:
        return self.dataset.target

    def out_dir(self, strategy: str) -> Path:
        return self.workspace.model_dir(strategy)


@dataclass(frozen=True)
class TransferResult:
    strategy: str
    model_dir: Path
    training: TrainResult
    serves: str  # which segments the strategy can score from real evidence


def save_strategy(
    ctx: TransferContext,
    name: str,
    state: Mapping[str, Tensor],
    config: TransferConfig,
    result: TrainResult,
    *,
    kind: str | None = None,
    also_built_from: Mapping[str, str | None] | None = None,
    **details: object,
) -> Path:
    """Write models/<name>/ with what every strategy records, plus its own `details`.

    `built_from` records the source model's fingerprint (its vectors or weights fed every strategy), plus
    `also_built_from`'s models, so a later retraining of any of them marks this strategy stale.
    """
    out = ctx.out_dir(name)
    save_checkpoint(
        out,
        state,
        {
            "kind": kind or name,
            "name": name,
            "strategy": name,
            "domain": ctx.target,
            "role": "target",
            "dataset": dataset_identity(ctx.dataset),
            "train": asdict(config.train),
            "loss": result.loss,
            "epochs_run": result.epochs_run,
            "best_valid": {result.metric_name: result.best_metric},
            BUILT_FROM: {config.source_model: ctx.source.fingerprint, **(also_built_from or {})},
            **details,
        },
    )
    return out


def keep_tail(history: Tensor, width: int) -> Tensor:
    """(B, L) left-padded -> (B, width): the most recent `width` items, left-padded further if needed."""
    if history.shape[1] >= width:
        return history[:, history.shape[1] - width :]
    return torch.nn.functional.pad(history, (width - history.shape[1], 0))
