"""What every transfer strategy shares: its configuration, its inputs, and small tensor helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

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


def keep_tail(history: Tensor, width: int) -> Tensor:
    """(B, L) left-padded -> (B, width): the most recent `width` items, left-padded further if needed."""
    if history.shape[1] >= width:
        return history[:, history.shape[1] - width :]
    return torch.nn.functional.pad(history, (width - history.shape[1], 0))
