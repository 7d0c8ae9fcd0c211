"""`xdrec pretrain`: train one single-domain sequence model (SASRec) on one domain of a prepared dataset.

Early stopping chooses the epochs on the validation split; then (`--refit`, the default) the model is
trained again from its initial weights for as many epochs with each user's validation item as a label too,
and that is the model served: the validation item is the interaction just before the test item. The
weights validation chose stay beside it (`validation.safetensors`): what the transfer strategies are built
on and every choice on validation reads (`Checkpoint.for_validation`).

The training windows and validator are `xdrec.sequence_training`'s, loading is `xdrec.sequence_scorer`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from xdrec.checkpoint import dataset_identity
from xdrec.data.dataset import Dataset
from xdrec.devices import resolve_device
from xdrec.errors import XdrecError
from xdrec.fit import Plan, fit
from xdrec.models import BackboneConfig, backbone_kind, build_backbone, default_config
from xdrec.sequence_scorer import SequenceScorer
from xdrec.sequence_training import ndcg_validator, training_examples
from xdrec.training import TrainConfig, TrainResult
from xdrec.tuned_settings import Tuned, apply_tuned
from xdrec.workspace import Workspace


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
    scorer: SequenceScorer  # the trained model (best weights, eval mode), ready for evaluation
    tuned: Tuned | None = None  # the stored `xdrec tune` settings it was trained with, if any
    # its refit with the validation items as labels too (`fit.Plan.refit`): epochs, sequences, seconds
    refit: dict[str, Any] | None = None


def default_model_name(dataset: Dataset, domain: str) -> str:
    """`source-only` / `target-only`: a SASRec that sees one domain only, as reports name it."""
    return f"{dataset.role(domain)}-only"


def pretrain(
    workspace: Workspace,
    *,
    dataset: str | None = None,
    domain: str | None = None,
    model: BackboneConfig | None = None,
    train_config: TrainConfig = TrainConfig(),
    name: str | None = None,
    resume: bool | None = False,  # None: if an interrupted run was started the same way
    progress: bool = True,
    validate: Callable[[nn.Module], float] | None = None,
    tuned: bool = False,
    keep: Collection[str] = (),
) -> PretrainResult:
    """Train a sequence model on `domain` (default: the dataset's source) and write models/<name>/.

    dataset: a prepared dataset's name (default: the workspace's current one).
    model: the backbone and its architecture, default SASRec's defaults; its n_items is replaced by the
        domain's (pass e.g. SASRecConfig(0, hidden=128)).
    name: default `source-only` / `target-only` by the domain's role.
    validate: overrides the default validation (full-ranking NDCG@10 on the valid split).
    tuned: apply the settings `xdrec tune` stored for this model (architecture and training), except the
        fields named in `keep` (the options a user set explicitly); see `xdrec.tuned_settings`.
    """
    data = Dataset.from_workspace(workspace, dataset)
    domain = domain or data.source
    data.check_domain(domain)
    name = name or default_model_name(data, domain)
    cfg = replace(model or default_config(), n_items=data.n_items(domain))
    settings = None
    if tuned:
        (cfg, train_config), settings = apply_tuned(workspace, data, name, (cfg, train_config), keep)
    sequences = data.train_sequences(domain)
    examples = training_examples(sequences, cfg.max_len)
    n_users = int((sequences["items"].list.len() >= 2).sum())
    if len(examples) == 0:
        raise XdrecError(f"no user has two or more training interactions in {domain}: nothing to train on")
    resolve_device(train_config.device)  # fail on a missing GPU before reading more data

    def plan() -> Plan:
        net = build_backbone(cfg)
        check = validate or ndcg_validator(data, domain, name)
        return Plan(
            net,  # type: ignore[arg-type]
            examples,
            check,
            item_counts=data.item_counts(domain),
            refit=training_examples(data.history_sequences(domain, "test"), cfg.max_len),
        )

    record = {
        "kind": backbone_kind(cfg),
        "name": name,
        "domain": domain,
        "role": data.role(domain),
        "dataset": dataset_identity(data),
        "n_items": cfg.n_items,
        "model": asdict(cfg),  # type: ignore[call-overload]
        "examples": {"users": n_users, "sequences": len(examples)},
        **({} if settings is None else {"tuned": {"trial": settings.trial, "valid": settings.value}}),
    }
    out = workspace.model_dir(name)
    fitted = fit(plan, train_config, out, record, resume=resume, progress=progress)
    return PretrainResult(
        name=name,
        domain=domain,
        dataset=data.name,
        model_dir=out,
        n_items=cfg.n_items,
        n_users=n_users,
        n_sequences=len(examples),
        training=fitted.training,
        scorer=SequenceScorer(fitted.model, name, domain),  # type: ignore[arg-type]
        tuned=settings,
        refit=fitted.checkpoint.config.get("refit"),
    )
