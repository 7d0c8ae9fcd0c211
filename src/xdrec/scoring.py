"""The one interface between models and evaluation: something that scores every item of a domain.

Evaluation, `recommend` and validation during training all call `Scorer.scores`; every model
(popularity, SASRec, each transfer strategy) implements it. `pad_left` is the one way item sequences
become the left-padded inputs it takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl
import torch


class Scorer(Protocol):
    """Besides `name` and `scores`, a scorer may say two things the report uses (read with getattr,
    absent = False / None):
        history_only  its scores read nothing but the user's history in the scored domain, so it cannot
                      rank a user who has none there (a cold user): its row says so instead of a number.
        defers_to     the name of the model whose scores it returns for every user with history in the
                      scored domain (a strategy that falls back): its row says `= <name>`.
    """

    name: str

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item for a batch of users.

        user_ids: (B,) long, dataset user ids (models that use source-domain data look users up by it).
        history:  (B, L) long, each user's time-ordered item ids in the scored domain, LEFT-padded with 0
                  (the most recent item is in the last column); a model truncates to its own max length.
        returns:  (B, n_items + 1) float on any device; column 0 (padding) is ignored by the caller.
        """
        ...


@runtime_checkable
class FactoredScorer(Scorer, Protocol):
    """A Scorer whose scores are a product, `user_vectors(...) @ item_vectors().T`: evaluation can then
    score a huge catalogue a chunk of items at a time instead of materialising (B, n_items + 1)."""

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(B,) and (B, L) as for `scores` -> (B, D)."""
        ...

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, D), on the device the user vectors come back on."""
        ...


Sequences = Sequence[np.ndarray | Sequence[int]] | pl.Series | torch.Tensor


class Precomputed:
    """A Scorer over a fixed set of users whose scores are already computed (to rank them with the
    project's metrics, e.g. while choosing a blend on validation)."""

    def __init__(self, user_ids: torch.Tensor, scores: torch.Tensor, name: str = "precomputed") -> None:
        self.row = {int(u): i for i, u in enumerate(user_ids)}
        self.given, self.name = scores, name

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.given[torch.tensor([self.row[int(u)] for u in user_ids])]


def pad_left(sequences: Sequences, width: int | None = None) -> torch.Tensor:
    """Item-id sequences -> (B, W) long, right-aligned and left-padded with 0.

    sequences: Python/numpy sequences, a Polars list column, or a (B, L) tensor that is already
               left-padded (then only its width changes).
    W is `width` when given (keeping each sequence's most recent `width` items), else the longest length;
    at least one column.
    """
    if isinstance(sequences, torch.Tensor):
        if width is None or sequences.shape[1] == width:
            return sequences
        if sequences.shape[1] > width:
            return sequences[:, sequences.shape[1] - width :]
        return torch.nn.functional.pad(sequences, (width - sequences.shape[1], 0))
    if isinstance(sequences, pl.Series):
        lengths = sequences.list.len().fill_null(0).to_numpy().astype(np.int64)
        values = sequences.explode(empty_as_null=False, keep_nulls=False).to_numpy().astype(np.int64)
    else:
        arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if width is None:
        width = int(lengths.max(initial=0))
    columns = max(width, 1)
    rows = np.repeat(np.arange(len(lengths)), lengths)  # the row of each element
    back = np.repeat(np.cumsum(lengths), lengths) - 1 - np.arange(len(values))  # 0 = a row's most recent
    keep = back < width
    out = np.zeros((len(lengths), columns), dtype=np.int64)
    out[rows[keep], columns - 1 - back[keep]] = values[keep]
    return torch.from_numpy(out)
