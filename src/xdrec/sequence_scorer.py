"""The sequence model's runtime: training windows, validation, loading, and scoring with a backbone.

Every stage and strategy that trains or reads a single-domain sequence model goes through this module
(never through another stage): `pretrain` trains one, `embed` reads user vectors from it, `finetune`
starts from its blocks, `mapping` scores against its item table, `zoo` loads it for evaluation. The model
itself is any `xdrec.models.Backbone` (SASRec today).

Training examples: each user's training sequence in the domain, every position labelled with the next
item. A sequence longer than max_len + 1 items is cut, from the most recent end, into windows of
max_len + 1 items that overlap by one, so every transition is trained exactly once and the most recent
window has full context (older windows start their context afresh).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import polars as pl
import torch
from torch import Tensor

from xdrec.checkpoint import Checkpoint, read_checkpoint
from xdrec.data.dataset import Dataset
from xdrec.devices import resolve_device
from xdrec.errors import OptionError, XdrecError
from xdrec.models import BACKBONES, Backbone, BackboneConfig
from xdrec.training import Examples
from xdrec.validation import validation_metric
from xdrec.workspace import Workspace


@dataclass(frozen=True)
class ModelOptions:
    """Architecture settings given by the user; None keeps the base's value.

    The base is the backbone's defaults for `pretrain` and the source model's architecture for the
    strategies, which build on it (`finetune` copies its blocks, so it refuses another shape).
    """

    hidden: int | None = None
    blocks: int | None = None
    heads: int | None = None
    dropout: float | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        for name in ("hidden", "blocks", "heads", "max_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise OptionError(f"--dropout must be in [0, 1), got {self.dropout}")

    def given(self) -> dict[str, int | float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def apply(self, base: BackboneConfig) -> BackboneConfig:
        try:
            return replace(base, **self.given())  # type: ignore[type-var]
        except ValueError as e:  # the config's own check, e.g. hidden not divisible by heads
            raise XdrecError(f"invalid model settings: {e}") from None


class SequenceScorer:
    """A trained backbone as a `Scorer`: the last position's hidden state against every item."""

    history_only = True  # it reads the domain's history alone: nothing to rank a user without one

    def __init__(
        self, model: Backbone, name: str = "sasrec", domain: str | None = None, fingerprint: str | None = None
    ) -> None:
        self.model = model
        self.name = name
        self.domain = domain
        self.fingerprint = fingerprint  # of the checkpoint it was loaded from (see xdrec.checkpoint)

    @property
    def device(self) -> torch.device:
        return self.model.item_embeddings().device

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        """user_ids (B,) (unused: the history is the user), history (B, L) left-padded -> (B, n_items + 1)."""
        return self.user_vectors(user_ids, history) @ self.item_vectors().T  # (B, n_items + 1)

    @torch.no_grad()
    def user_vectors(self, user_ids: Tensor, history: Tensor) -> Tensor:
        """(B, D): the last position's hidden state (a `FactoredScorer`, for chunked evaluation)."""
        self.model.eval()  # type: ignore[attr-defined]
        return self.model.user_vector(history[:, -self.model.cfg.max_len :].to(self.device))

    def item_vectors(self) -> Tensor:
        return self.model.item_embeddings().detach()


def training_examples(sequences: pl.DataFrame, max_len: int) -> Examples:
    """`Dataset.train_sequences` -> (N, max_len) inputs and next-item labels, windows as in the module doc."""
    seqs = sequences.filter(pl.col("items").list.len() >= 2)["items"]
    n = seqs.list.len().to_numpy().astype(np.int64)  # (U,)
    flat = seqs.explode().to_numpy().astype(np.int64)  # (sum n,)
    windows = -(-(n - 1) // max_len)  # (U,) ceil(transitions / max_len)
    first_row = np.cumsum(windows) - windows  # (U,)
    user = np.repeat(np.arange(len(n)), n)  # (sum n,) whose sequence each item is in
    j = np.arange(len(flat)) - np.repeat(np.cumsum(n) - n, n)  # position within the sequence
    label = j >= 1  # every item but a user's first is some position's label
    back = (n[user] - 1 - j)[label]  # 0 for the most recent transition
    row = first_row[user[label]] + windows[user[label]] - 1 - back // max_len  # oldest window first
    col = max_len - 1 - back % max_len  # right-aligned: the most recent item in the last column
    inputs = np.zeros((int(windows.sum()), max_len), dtype=np.int64)
    labels = np.zeros_like(inputs)
    inputs[row, col] = flat[np.flatnonzero(label) - 1]
    labels[row, col] = flat[label]
    return Examples(torch.from_numpy(inputs), torch.from_numpy(labels))


def ndcg_validator(
    dataset: Dataset, domain: str, name: str = "sasrec"
) -> Callable[[torch.nn.Module], float] | None:
    """Full-ranking NDCG@10 over (a sample of) the domain's validation users; None when it has none."""
    return validation_metric(
        dataset.eval_cases(domain, "valid"),
        dataset.n_items(domain),
        lambda m: SequenceScorer(m, name),  # type: ignore[arg-type]
    )


def load_backbone(workspace: Workspace, name: str, dataset: Dataset, device: str = "auto") -> SequenceScorer:
    """models/<name>/ (a single-domain sequence model) as a Scorer in eval mode.

    Refuses a checkpoint trained on another dataset, or one that is not a backbone (a strategy's).
    """
    return backbone_from_checkpoint(read_checkpoint(workspace.model_dir(name), dataset), device)


def backbone_from_checkpoint(checkpoint: Checkpoint, device: str = "auto") -> SequenceScorer:
    """The backbone a checkpoint holds, as a Scorer in eval mode on `device`.

    The model is built on the meta device and takes the saved tensors as they are: loading draws no
    random numbers, so it never shifts a seeded training that follows.
    """
    name = checkpoint.path.name
    kind = BACKBONES.get(checkpoint.kind)
    if kind is None:
        raise XdrecError(
            f"model {name} is a {checkpoint.kind!r} model, not a sequence model ({', '.join(BACKBONES)})"
        )
    cfg = kind.config(**checkpoint.config["model"])
    with torch.device("meta"):
        model = kind.module(cfg)
    try:
        model.load_state_dict(checkpoint.state_dict(), assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise XdrecError(
            f"model {name}'s weights do not match its config.json ({first}): retrain it"
        ) from None
    model.to(resolve_device(device)).eval()
    scorer = SequenceScorer(model, name, checkpoint.config.get("domain"), checkpoint.fingerprint)  # type: ignore[arg-type]
    return scorer
