"""A trained single-domain sequence model (any `xdrec.models.Backbone`) as a `Scorer`, and its loading.

Every stage and strategy that reads a trained backbone goes through this module (never through another
stage): `embed` reads user vectors from it, `finetune` starts from its blocks, `mapping` scores against its
item table, the store (`xdrec.store`) loads it for evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xdrec.checkpoint import Checkpoint, read_checkpoint
from xdrec.data.dataset import Dataset
from xdrec.devices import resolve_device
from xdrec.errors import XdrecError
from xdrec.models import BACKBONES, Backbone
from xdrec.workspace import Workspace


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


def load_backbone(
    workspace: Workspace, name: str, dataset: Dataset, device: str = "auto", for_validation: bool = False
) -> SequenceScorer:
    """models/<name>/ (a single-domain sequence model) as a Scorer in eval mode. for_validation: with the
    weights validation chose where the model was refitted (`Checkpoint.for_validation`), as a model built
    on it or a choice on the validation split must see it.

    Refuses a checkpoint trained on another dataset, or one that is not a backbone (a strategy's).
    """
    checkpoint = read_checkpoint(workspace.model_dir(name), dataset)
    return backbone_from_checkpoint(checkpoint.for_validation() if for_validation else checkpoint, device)


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
