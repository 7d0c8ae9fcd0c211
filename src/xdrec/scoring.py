"""The one interface between models and evaluation: something that scores every item of a domain.

Evaluation, `recommend` and validation during training all call `Scorer.scores`; every model
(popularity, SASRec, each transfer strategy) implements it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch


class Scorer(Protocol):
    name: str

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item for a batch of users.

        user_ids: (B,) long, dataset user ids (models that use source-domain data look users up by it).
        history:  (B, L) long, each user's time-ordered item ids in the scored domain, LEFT-padded with 0
                  (the most recent item is in the last column); a model truncates to its own max length.
        returns:  (B, n_items + 1) float on any device; column 0 (padding) is ignored by the caller.
        """
        ...


def pad_left(sequences: Sequence[np.ndarray | Sequence[int]], width: int | None = None) -> torch.Tensor:
    """Item-id sequences -> (B, W) long, right-aligned and left-padded with 0.

    W is `width` when given (keeping each sequence's most recent `width` items), else the longest length.
    """
    arrays = [np.asarray(s, dtype=np.int64) for s in sequences]
    if width is not None:
        arrays = [a[len(a) - width :] if len(a) > width else a for a in arrays]
    else:
        width = max((len(a) for a in arrays), default=0)
    out = np.zeros((len(arrays), max(width, 1)), dtype=np.int64)
    for row, a in enumerate(arrays):
        if len(a):
            out[row, out.shape[1] - len(a) :] = a
    return torch.from_numpy(out)
