"""Sequence models and their training losses."""

from xdrec.models.losses import LossChoice, choose_loss, make_loss
from xdrec.models.sasrec import SASRec, SASRecConfig

__all__ = ["LossChoice", "SASRec", "SASRecConfig", "choose_loss", "make_loss"]
