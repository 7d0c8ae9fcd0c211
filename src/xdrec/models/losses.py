"""Next-item losses over every labelled position (label 0 = padding = no loss).

    ce        full softmax over the domain's items. The default for catalogues up to CE_MAX_ITEMS whose
              logits fit in memory: Klenitskiy & Vasilev (2023) find it beats one-negative BCE by
              1.3-2.6x NDCG@10.
    bce       the SASRec paper's loss: the positive against one uniformly drawn negative per position.
    sampled   softmax over the positive and N negatives shared by the batch, drawn by popularity, with
              the logQ correction (Bengio & Senécal 2008; Yi et al. 2019) so it estimates the full
              softmax. With `in_batch` (the default), the batch's other labelled positions' items are
              negatives too (mixed negative sampling, Yang et al. 2020): M - 1 more candidates per
              position at the cost of one (M, M) block of logits, M = labelled positions in the batch.
              The default above CE_MAX_ITEMS items: on a 16K-item catalogue it trains 3.3x faster than
              `ce` at the same validation NDCG@10 (BENCHMARKS, "Fast on a CPU").
    two-domain sampled   InfoNCE for a model of two domains' merged timeline (`joint`): each label, in its
              own domain's view of the position, against N negatives drawn uniformly from that domain's
              items (shared by the batch), as ABXI and C2DSR train. Uniform draws need no logQ correction
              (it is the same constant for every candidate), and cost N logits a position instead of
              the catalogue's: the reason a merged-timeline model trains in minutes on a CPU.

Each loss is `loss(hidden (B, L, D), labels (B, L), table (V, D)) -> scalar`, the mean over the labelled
positions; the sampling losses draw from a seeded `torch.Generator` on the training device (the CPU one
on CPU), so a run is reproducible, its state can be checkpointed, and a GPU step draws with no host copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES: tuple[str, ...] = ("ce", "bce", "sampled")
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]

# Full softmax materialises batch * len * (n_items + 1) float32 logits and as many gradients.
CE_MEMORY_BUDGET = 4 * 2**30
# Above this many items `auto` trains with `sampled`: the full softmax's cost grows with the catalogue, the
# sampled loss's with its candidates (negatives + in-batch labels, a few thousand), so beyond ~10K items
# `ce` is the slower by 2x or more for no better validation score (measured at 16K items in BENCHMARKS).
CE_MAX_ITEMS = 10_000


def _labelled(hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Keep only the positions that have a label: (B, L, D), (B, L) -> (M, D), (M,)."""
    keep = labels != 0
    return hidden[keep], labels[keep]


def _wide(logits: Tensor) -> Tensor:
    """bf16 logits (CUDA autocast) -> float32 for the softmax; float32 and float64 stay as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def ce_loss(hidden: Tensor, labels: Tensor, table: Tensor) -> Tensor:
    h, y = _labelled(hidden, labels)
    logits = _wide(h @ table.T)  # (M, V)
    logits[:, 0] = float("-inf")  # padding is never the next item
    return F.cross_entropy(logits, y)


def uniform_negatives(y: Tensor, n_items: int, generator: torch.Generator) -> Tensor:
    """One negative per label, uniform over the n_items - 1 items other than it: (M,) -> (M,)."""
    if n_items < 2:
        raise ValueError("bce needs at least two items to draw a negative from")
    r = torch.randint(1, n_items, (y.shape[0],), generator=generator, device=generator.device)  # 1..n-1 ...
    r = r.to(y.device)
    return r + (r >= y).long()  # ... and step over the positive


def bce_loss(hidden: Tensor, labels: Tensor, table: Tensor, generator: torch.Generator) -> Tensor:
    h, y = _labelled(hidden, labels)
    neg = uniform_negatives(y, table.shape[0] - 1, generator)  # (M,)
    pos_logit = _wide((h * table[y]).sum(-1))  # (M,)
    neg_logit = _wide((h * table[neg]).sum(-1))  # (M,)
    return (F.softplus(-pos_logit) + F.softplus(neg_logit)).mean()  # -log σ(pos) - log(1 - σ(neg))


def sampling_log_q(item_counts: np.ndarray | None, n_items: int) -> Tensor:
    """log of the negative-sampling distribution over ids 0..n_items: popularity + 1 (so every item can
    be drawn), padding never. Without counts it is uniform."""
    counts = np.ones(n_items + 1) if item_counts is None else np.asarray(item_counts, dtype=np.float64) + 1.0
    if counts.shape != (n_items + 1,):
        raise ValueError(f"item_counts has {counts.shape[0]} entries, expected n_items + 1 = {n_items + 1}")
    counts[0] = 0.0
    return torch.from_numpy(counts / counts.sum()).float().log()  # log 0 = -inf: padding


def popularity_negatives(log_q: Tensor, negatives: int, generator: torch.Generator) -> Tensor:
    """`negatives` item ids drawn with replacement from exp(log_q), shared by the whole batch: (N,)."""
    return torch.multinomial(log_q.exp(), negatives, replacement=True, generator=generator)


def sampled_softmax_loss(
    hidden: Tensor,
    labels: Tensor,
    table: Tensor,
    log_q: Tensor,
    negatives: int,
    generator: torch.Generator,
    in_batch: bool = False,
) -> Tensor:
    h, y = _labelled(hidden, labels)
    neg = popularity_negatives(log_q, negatives, generator).to(y.device)  # (N,)
    # In-batch negatives: every other labelled position's item. Labels follow the training popularity
    # that q is built from, so the M - 1 of them are (approximately) M - 1 more draws from q.
    candidates = torch.cat([y, neg]) if in_batch else neg  # (C,)
    draws = negatives + (len(y) - 1 if in_batch else 0)
    # logQ correction: every candidate's logit minus the log of its expected count among the draws, so
    # sum(exp) over the candidates estimates the full softmax's normaliser and, as the draws grow, the
    # gradient tends to full softmax's (popular items are not over-penalised). Draws of the positive
    # stay: they are its share of that estimate (masking them biases the gradient when it is popular).
    log_expected = log_q.to(y.device) + np.log(max(draws, 1))  # (V,)
    pos_logit = _wide((h * table[y]).sum(-1)) - log_expected[y]  # (M,)
    neg_logit = _wide(h @ table[candidates].T) - log_expected[candidates]  # (M, C)
    if in_batch:  # a position's own label is its positive, not a draw
        neg_logit[:, : len(y)].diagonal().fill_(float("-inf"))
    logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)  # (M, 1 + C)
    return F.cross_entropy(logits, torch.zeros_like(y))


def two_domain_sampled_loss(
    boundary: int, n_items: int, negatives: int, generator: torch.Generator
) -> LossFn:
    """InfoNCE for two domains' views: hidden (B, L, 2, D), labels (B, L) in 1..n_items, table (V, D).

    Labels 1..boundary are domain 0's items and scored with view 0; boundary + 1..n_items domain 1's, with
    view 1. Each domain's `negatives` (at most as many as it has items) are drawn uniformly from its items
    once per batch; a draw that is the position's own label is masked (a positive among the negatives)."""
    if not 0 < boundary < n_items:
        raise ValueError(f"the boundary {boundary} must split items 1..{n_items} into two non-empty domains")
    bounds = ((1, boundary + 1), (boundary + 1, n_items + 1))

    def two_domain_sampled(hidden: Tensor, labels: Tensor, table: Tensor) -> Tensor:
        views, y = _labelled(hidden, labels)  # (M, 2, D), (M,)
        total = views.new_zeros(())
        for view, (first, last) in enumerate(bounds):
            rows = (y >= first) & (y < last)  # this domain's labels, scored in its view
            # No more draws than the domain has items: beyond that they only repeat (a small catalogue).
            draws = min(negatives, last - first)
            drawn = torch.randint(first, last, (draws,), generator=generator, device=generator.device)
            drawn = drawn.to(y.device)  # (N,)
            h, own = views[rows, view], y[rows]  # (m, D), (m,)
            pos = _wide((h * table[own]).sum(-1))  # (m,)
            neg = _wide(h @ table[drawn].T).masked_fill(drawn[None] == own[:, None], float("-inf"))  # (m, N)
            logits = torch.cat([pos[:, None], neg], dim=1)  # (m, 1 + N)
            total = total + F.cross_entropy(logits, torch.zeros_like(own), reduction="sum")
        return total / len(y)

    return two_domain_sampled


@dataclass(frozen=True)
class LossChoice:
    name: str  # ce | bce | sampled, or a caller's own loss function's name
    reason: str  # one line for config.json: why this loss, with the numbers behind an `auto` choice

    @property
    def words(self) -> str:
        """The loss in plain words, for the screen."""
        plain = {"ce": "full softmax", "bce": "binary cross-entropy", "sampled": "sampled softmax"}
        if self.name not in plain:
            return "the model's own loss"
        if self.name == "sampled" and self.reason.startswith("auto"):
            why = "would not fit in memory" if "over the" in self.reason else "would be slower"
            return f"sampled softmax (a full softmax {why})"
        return plain[self.name]


def choose_loss(requested: str, n_items: int, batch_size: int, max_len: int) -> LossChoice:
    """Resolve `auto` by catalogue size: `ce` up to CE_MAX_ITEMS items while its logits fit
    CE_MEMORY_BUDGET, else `sampled`."""
    need = batch_size * max_len * (n_items + 1) * 4 * 2  # float32 logits and their gradient
    gib = f"{batch_size}x{max_len}x{n_items + 1:,} logits need {need / 2**30:.2f} GiB"
    budget = f"{CE_MEMORY_BUDGET / 2**30:.0f} GiB budget"
    if requested == "auto":
        if need > CE_MEMORY_BUDGET:
            return LossChoice("sampled", f"auto: sampled softmax, full softmax's {gib} (over the {budget})")
        if n_items > CE_MAX_ITEMS:
            return LossChoice(
                "sampled", f"auto: sampled softmax, {n_items:,} items (full softmax up to {CE_MAX_ITEMS:,})"
            )
        return LossChoice("ce", f"auto: full softmax, {n_items:,} items, {gib} (within the {budget})")
    if requested not in LOSSES:
        raise ValueError(f"unknown loss {requested!r}: choose one of auto, {', '.join(LOSSES)}")
    return LossChoice(requested, f"{requested}: as requested")


def make_loss(
    name: str,
    generator: torch.Generator,
    *,
    negatives: int = 1024,
    item_counts: np.ndarray | None = None,
    n_items: int | None = None,
    in_batch: bool = False,
) -> LossFn:
    """A `loss(hidden, labels, table)` closure; `n_items` (and `item_counts`, `in_batch`) are for
    `sampled`. Negatives are drawn on `generator`'s device."""
    if name == "ce":
        return ce_loss
    if name == "bce":
        return lambda hidden, labels, table: bce_loss(hidden, labels, table, generator)
    if name == "sampled":
        if n_items is None:
            raise ValueError("the sampled loss needs n_items")
        log_q = sampling_log_q(item_counts, n_items).to(generator.device)
        return lambda hidden, labels, table: sampled_softmax_loss(
            hidden, labels, table, log_q, negatives, generator, in_batch
        )
    raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
