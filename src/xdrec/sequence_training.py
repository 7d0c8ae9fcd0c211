"""What training a single-domain sequence model reads: its examples (windows of each user's sequence) and
its validator. `pretrain`, `finetune` and `tune` use them.

Training examples: each user's training sequence in the domain, every position labelled with the next
item. A sequence longer than max_len + 1 items is cut, from the most recent end, into windows of
max_len + 1 items that overlap by one, so every transition is trained exactly once and the most recent
window has full context (older windows start their context afresh).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import torch

from xdrec.data.dataset import Dataset
from xdrec.sequence_scorer import SequenceScorer
from xdrec.training import Examples
from xdrec.validation import validation_metric


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
