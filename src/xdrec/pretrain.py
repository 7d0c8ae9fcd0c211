"""`xdrec pretrain`: train one SASRec on one domain of a prepared dataset, and load it back as a Scorer.

Training examples: each user's training sequence in the domain, every position labelled with the next
item. A sequence longer than max_len + 1 items is cut, from the most recent end, into windows of
max_len + 1 items that overlap by one, so every transition is trained exactly once and the most recent
window has full context (older windows start their context afresh).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from xdrec.checkpoint import dataset_identity, read_checkpoint, save_checkpoint
from xdrec.data.dataset import Dataset
from xdrec.devices import resolve_device
from xdrec.errors import XdrecError
from xdrec.evaluation import validation_metric
from xdrec.models.sasrec import SASRec, SASRecConfig
from xdrec.training import Examples, TrainConfig, TrainResult, train
from xdrec.workspace import Workspace

KIND = "sasrec"
METRIC = "NDCG@10"


class SASRecScorer:
    """A trained SASRec as an `xdrec.scoring.Scorer`: the last position's hidden state against every item."""

    def __init__(
        self, model: SASRec, name: str = "sasrec", domain: str | None = None, fingerprint: str | None = None
    ) -> None:
        self.model = model
        self.name = name
        self.domain = domain
        self.fingerprint = fingerprint  # of the checkpoint it was loaded from (see xdrec.checkpoint)

    @property
    def device(self) -> torch.device:
        return self.model.item_emb.weight.device

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        """user_ids (B,) (unused: the history is the user), history (B, L) left-padded -> (B, n_items + 1)."""
        self.model.eval()
        user = self.model.user_vector(history[:, -self.model.cfg.max_len :].to(self.device))  # (B, D)
        return user @ self.model.item_embeddings().T  # (B, n_items + 1)


@dataclass(frozen=True)
class PretrainResult:
    name: str  # the model's name in models/ and in reports
    domain: str
    dataset: str
    model_dir: Path
    n_items: int
    n_users: int  # users with at least one training transition
    n_sequences: int  # training windows (more than n_users when histories exceed max_len + 1)
    training: TrainResult  # loss chosen and why, epochs, best validation NDCG@10, timings, history
    scorer: SASRecScorer  # the trained model (best weights, eval mode), ready for evaluation


def default_model_name(dataset: Dataset, domain: str) -> str:
    """`source-only` / `target-only`: a SASRec that sees one domain only, as reports name it."""
    return f"{dataset.role(domain)}-only"


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


def ndcg_validator(dataset: Dataset, domain: str, name: str = "sasrec") -> Callable[[SASRec], float] | None:
    """Full-ranking NDCG@10 over (a sample of) the domain's validation users; None when it has none."""
    return validation_metric(
        dataset.eval_cases(domain, "valid"), dataset.n_items(domain), lambda m: SASRecScorer(m, name)
    )


def pretrain(
    workspace: Workspace,
    *,
    dataset: str | None = None,
    domain: str | None = None,
    model: SASRecConfig | None = None,
    train_config: TrainConfig = TrainConfig(),
    name: str | None = None,
    resume: bool = False,
    progress: bool = True,
    validate: Callable[[SASRec], float] | None = None,
) -> PretrainResult:
    """Train a SASRec on `domain` (default: the dataset's source) and write models/<name>/.

    dataset: a prepared dataset's name (default: the workspace's current one).
    model: architecture; its n_items is replaced by the domain's (pass e.g. SASRecConfig(0, hidden=128)).
    name: default `source-only` / `target-only` by the domain's role.
    validate: overrides the default validation (full-ranking NDCG@10 on the valid split).
    """
    data = Dataset.from_workspace(workspace, dataset)
    domain = domain or data.source
    data.check_domain(domain)
    name = name or default_model_name(data, domain)
    cfg = replace(model or SASRecConfig(0), n_items=data.n_items(domain))
    sequences = data.train_sequences(domain)
    examples = training_examples(sequences, cfg.max_len)
    n_users = int((sequences["items"].list.len() >= 2).sum())
    if len(examples) == 0:
        raise XdrecError(f"no user has two or more training interactions in {domain}: nothing to train on")
    resolve_device(train_config.device)  # fail on a missing GPU before reading more data

    torch.manual_seed(train_config.seed)  # the initial weights
    net = SASRec(cfg)
    validate = validate or ndcg_validator(data, domain, name)
    out = workspace.model_dir(name)
    result = train(
        net,
        examples,
        train_config,
        validate=validate,
        metric_name=METRIC,
        out_dir=out,
        resume=resume,
        item_counts=data.item_counts(domain),
        progress=progress,
    )
    save_checkpoint(
        out,
        net.state_dict(),
        {
            "kind": KIND,
            "name": name,
            "domain": domain,
            "role": data.role(domain),
            "dataset": dataset_identity(data),
            "n_items": cfg.n_items,
            "model": asdict(cfg),
            "train": asdict(train_config),
            "loss": result.loss,
            "loss_reason": result.loss_reason,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_valid": {METRIC: result.best_metric},
            "stopped_early": result.stopped_early,
            "examples": {"users": n_users, "sequences": len(examples)},
        },
    )
    return PretrainResult(
        name=name,
        domain=domain,
        dataset=data.name,
        model_dir=out,
        n_items=cfg.n_items,
        n_users=n_users,
        n_sequences=len(examples),
        training=result,
        scorer=SASRecScorer(net, name, domain),
    )


def load_sasrec(workspace: Workspace, name: str, dataset: Dataset, device: str = "auto") -> SASRecScorer:
    """models/<name>/ as a Scorer in eval mode; refuses a checkpoint trained on another dataset."""
    checkpoint = read_checkpoint(workspace.model_dir(name), dataset, kind=KIND)
    cfg = SASRecConfig(**checkpoint.config["model"])
    model = SASRec(cfg)
    try:
        model.load_state_dict(checkpoint.state_dict())
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise XdrecError(
            f"model {name}'s weights do not match its config.json ({first}): retrain it"
        ) from None
    model.to(resolve_device(device)).eval()
    return SASRecScorer(model, name, checkpoint.config.get("domain"), checkpoint.fingerprint)
