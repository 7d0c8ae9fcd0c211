"""Sequence models (backbones) and their training losses.

A backbone is a sequence encoder that the stages and strategies use only through the `Backbone`
protocol below; `BACKBONES` maps the `kind` a checkpoint records to its module and config classes.
A second backbone is one new file here plus one line in `BACKBONES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn

from xdrec.models.losses import LossChoice, choose_loss, make_loss
from xdrec.models.sasrec import SASRec, SASRecConfig


class BackboneConfig(Protocol):
    n_items: int  # item ids 1..n_items, 0 is padding
    hidden: int  # D, the width of hidden states and item embeddings
    max_len: int  # the longest history the model reads (it keeps the most recent items)


class Backbone(Protocol):
    cfg: BackboneConfig

    def __call__(self, items: Tensor, extra: Tensor | None = None) -> Tensor:
        """Encode left-padded histories: items (B, L) -> hidden states (B, L, D), zero at padding.

        extra (B, L, D), optional, is added to each position's input embedding (strategies' hook).
        """
        ...

    def item_embeddings(self) -> Tensor:
        """The output table (n_items + 1, D): scores = hidden @ table.T; row 0 is padding."""
        ...

    def user_vector(self, items: Tensor) -> Tensor:
        """(B, L) -> (B, D): the hidden state after each user's most recent item."""
        ...

    def load_blocks(self, state: dict[str, Tensor]) -> list[str]:
        """Copy the sequence-reading weights (not the item table) of another model of the same kind."""
        ...


@dataclass(frozen=True)
class BackboneKind:
    module: type[nn.Module]
    config: type


BACKBONES: dict[str, BackboneKind] = {
    "sasrec": BackboneKind(SASRec, SASRecConfig),
}
DEFAULT = "sasrec"  # what `pretrain` trains


def default_config(n_items: int = 0) -> BackboneConfig:
    """The default backbone's config with its declared defaults (xdrec.options), for `n_items` items."""
    return BACKBONES[DEFAULT].config(n_items)  # type: ignore[no-any-return]


def backbone_kind(cfg: object) -> str:
    """The registry name of a backbone config's kind (what a checkpoint records)."""
    for name, kind in BACKBONES.items():
        if type(cfg) is kind.config:
            return name
    raise TypeError(f"{type(cfg).__name__} is not a registered backbone config")


def load_config(record: dict) -> BackboneConfig:
    """The backbone config a checkpoint's config.json records (`backbone`, else its `kind`; `model`)."""
    kind = record.get("backbone", record.get("kind"))
    return BACKBONES[kind if kind in BACKBONES else "sasrec"].config(**record["model"])


def build_backbone(cfg: BackboneConfig) -> Backbone:
    return BACKBONES[backbone_kind(cfg)].module(cfg)  # type: ignore[call-arg, return-value]


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneConfig",
    "LossChoice",
    "SASRec",
    "SASRecConfig",
    "backbone_kind",
    "build_backbone",
    "choose_loss",
    "default_config",
    "load_config",
    "make_loss",
]
