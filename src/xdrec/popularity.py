"""The popularity baseline: every user gets the domain's most-interacted training items.

Reported beside every model, because a sequential model that does not beat "most popular" on a segment
has learned nothing useful for it (often the case for cold-start users).
"""

from __future__ import annotations

import numpy as np
import torch

from xdrec.data.dataset import Dataset
from xdrec.errors import XdrecError


class PopularityScorer:
    """Scores = training-set interaction count per item (index 0, padding, is ignored by the caller)."""

    name = "popularity"

    def __init__(self, counts: np.ndarray | torch.Tensor) -> None:
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
        if counts.ndim != 1 or len(counts) < 2:
            raise XdrecError("popularity needs one count per item id 0..n_items (e.g. Dataset.item_counts)")
        self.n_items = len(counts) - 1
        self._counts = counts

    @classmethod
    def from_dataset(cls, dataset: Dataset, domain: str) -> PopularityScorer:
        return cls(dataset.item_counts(domain))

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(B, n_items + 1) float32 on the inputs' device; the same row for every user."""
        if self._counts.device != user_ids.device:
            self._counts = self._counts.to(user_ids.device)  # moved once, then reused for every batch
        # A real (not expanded) tensor, so a caller may edit its copy in place.
        return self._counts.repeat(len(user_ids), 1)
