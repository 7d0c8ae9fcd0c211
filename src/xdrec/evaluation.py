"""Evaluation: per-user ranking metrics, per-segment summaries with bootstrap CIs, and the `Report`.

One function ranks (`per_user_metrics`), one aggregates (`summarize`), one runs every model on a dataset's
split (`evaluate_scorers`). Everything below is the definition the numbers follow.

Protocols
    full          the headline. Every item 1..n_items of the evaluated domain is a candidate; column 0
                  (padding) never is.
    sampled-N     only to compare with papers. Each user's relevant items are ranked among N negatives drawn
                  uniformly without replacement from the domain's items minus the user's history and
                  relevant items (all eligible items when fewer than N remain). The negatives depend only on
                  (seed, cases, n_items), never on the batch size or the model, so every model in a report is
                  ranked against the same ones. The protocol name travels with every per-user row, summary
                  row and report, and `summarize` refuses to mix protocols.

Candidates and masking (full protocol)
    The user's own input history (`cases.history`) is removed from the candidates unless `keep_seen`: a
    recommender that re-suggests what the user just consumed would look good for the wrong reason. A relevant
    item is never removed, even when it is also in the history (a repeat purchase): the target is what the
    user did next, and hiding it would make that user unscorable. Under sampled-N, history and relevant items
    are never drawn as negatives, so `keep_seen` has no effect there.

Relevance, ranks and ties
    Relevance is binary: the user's distinct `targets`. Candidates are ordered by score, descending; ties
    are broken pessimistically: a non-relevant item tied with a relevant one ranks above it, so a model cannot
    gain from ties (a constant scorer ranks every relevant item after every other candidate). Relevant items
    tied with each other take consecutive positions (their order among themselves changes no metric).
    NaN scores count as -inf, the worst. Formally, with the relevant items in descending score order
    (k = 0, 1, ...):
        rank_k = 1 + k + #{non-relevant candidates j : score_j >= score_k}
    ABXI's and SASRec's reference code count only strictly higher scores (`>`), so a tie goes to the model.
    With real-valued model scores ties are rare and the two rules agree to the fourth decimal (measured
    in docs/benchmark-log.md, "Does the tie rule matter?"); a scorer with integer scores (popularity's
    counts) is where they differ, and there only the pessimistic rule is honest.

Metrics (per user; R = number of relevant items; hits@K = relevant items with rank <= K)
    HR@K       1 if hits@K > 0, else 0
    Recall@K   hits@K / R  (not / min(R, K): with R > K even a perfect ranking scores K / R; the plain
               definition is the one the papers' multi-target numbers use)
    NDCG@K     DCG@K / IDCG@K, DCG@K = sum over hits of 1 / log2(rank + 1),
               IDCG@K = sum_{i=1}^{min(R, K)} 1 / log2(i + 1) (a perfect ranking scores 1)
    MRR        1 / rank of the first relevant item in the whole list (not cut at K)

Segments
    Each user's segment comes from `Dataset.eval_cases` (warm | cold | <role>-only). `summarize` adds `all` =
    every user NOT in `cold`, i.e. the leave-one-out population; cold-start users are reported only under
    `cold`, so a transfer method's cold-start gains never blur the warm numbers.

    With `by_history` the warm users are also reported by how many items of the evaluated domain their
    history holds when they are ranked (`HISTORY_SEGMENTS`: `warm 1-2` ... `warm 8+`; under leave-one-out
    the test history includes the valid item): transfer matters most where that history is short, and the
    `warm` mean hides it (BENCHMARKS.md, "Does transfer help warm users?"). Those rows are extra: `warm`
    and `all` keep every warm user.

Domains
    A `Report` covers one domain. Under `prepare --split mixed` each user is tested once, in the domain of
    their last interaction, so each domain's report holds a different set of users. A domain where no user
    has anything to predict gives an empty report (`Report.empty`), said as such, never a row of zeros.

Paired comparisons
    In every segment each model's headline metric (NDCG at the first K) is compared with a baseline on the
    same users: `<role>-only` (the single-domain SASRec of the evaluated domain, what a user gets without
    transfer) for every segment but `cold`, where it is popularity (a single-domain model has nothing to
    read). delta = mean over users of (model - baseline); its CI is a percentile bootstrap that resamples
    users and takes the pair of values each resampled user has, so what the two models share (an easy
    user, a hard one) cancels and the interval is much narrower than the two separate CIs suggest. Every
    model of a segment is resampled with the same user draws (seeded by seed and segment name). A win or
    loss is significant when the interval excludes 0. A report without the baseline model has no delta.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import torch

from xdrec import distributed
from xdrec.data.dataset import Dataset
from xdrec.devices import resolve_device
from xdrec.errors import OptionError, XdrecError
from xdrec.popularity import PopularityScorer
from xdrec.progress import Update, counting
from xdrec.scoring import FactoredScorer, Scorer, pad_left

FULL = "full"
# How a relevant item's rank treats candidates with the same score (every output states it).
TIE_RULE = "ties count against the model (rank = 1 + candidates scoring >= the item; ABXI: only >)"
ALL_SEGMENT = "all"
COLD_SEGMENT = "cold"
WARM_SEGMENT = "warm"
# Items of the evaluated domain in a warm user's history (inclusive; None: no upper end) -> segment name.
HISTORY_SEGMENTS = {(1, 2): "warm 1-2", (3, 4): "warm 3-4", (5, 7): "warm 5-7", (8, None): "warm 8+"}
KEY_COLUMNS = ("user_id", "segment", "protocol")

# Up to this many relevant items per user the counting pass compares every candidate with each relevant
# score (T passes over the scores, cheapest for leave-one-out's T = 1); above it one bucketing pass
# (O(n_items log T)) wins. Both give identical counts; the tests run both.
_COMPARE_MAX_TARGETS = 2
# Users per block of sampled negatives = this / (n_items + 1), so the exact fallback's keys stay at 64 MiB.
_NEGATIVE_BLOCK_KEYS = 1 << 24
# Draws per user for the rejection sampler: this x negatives + the block's largest excluded set. Twice the
# need leaves few users short of distinct eligible items; those few take the exact (slower) path.
_DRAW_FACTOR = 2
# Full ranking of a FactoredScorer scores at most this many (user, item) pairs at a time: above it, the
# items are taken in chunks (Amazon Books' 495K items x 512 users would be 1 GB of float32 scores per copy).
_SCORE_ELEMENTS = 1 << 25
# The name each segment's paired delta is measured against; `<role>-only` is filled in per domain.
COLD_BASELINE = PopularityScorer.name
# Elements of one bootstrap chunk (replicates x users x metrics, float64: 32 MiB).
_BOOTSTRAP_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------- names


def protocol_name(negatives: int | None) -> str:
    """'full' or 'sampled-N': the label every number computed under that protocol carries."""
    return FULL if negatives is None else f"sampled-{negatives}"


def metric_names(ks: Sequence[int]) -> list[str]:
    """Metric columns in report order: per K, HR@K, NDCG@K, Recall@K; then MRR."""
    return [f"{m}@{k}" for k in ks for m in ("HR", "NDCG", "Recall")] + ["MRR"]


def segment_sort_key(segment: str) -> tuple[int, str]:
    """Report order: all, warm, warm by history length, cold, then any other (e.g. target-only)."""
    fixed = {ALL_SEGMENT: 0, WARM_SEGMENT: 1, COLD_SEGMENT: 3}
    by_history = {name: (2, f"{i}") for i, name in enumerate(HISTORY_SEGMENTS.values())}
    return by_history.get(segment) or (fixed.get(segment, 4), segment)


def history_segments(cases: pl.DataFrame) -> pl.DataFrame:
    """`cases`' warm users, each with the segment of their history's length (HISTORY_SEGMENTS)."""
    n = pl.col("history").list.len()
    segment = pl.lit(None, dtype=pl.String)
    for (lo, hi), name in HISTORY_SEGMENTS.items():
        segment = (
            pl.when(n >= lo if hi is None else n.is_between(lo, hi)).then(pl.lit(name)).otherwise(segment)
        )
    return cases.filter(pl.col("segment") == WARM_SEGMENT).with_columns(segment=segment)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(dict.fromkeys(int(k) for k in ks))
    if not out or min(out) < 1:
        raise OptionError(f"cut-offs K must be positive integers, got {list(ks)}")
    return out


# ---------------------------------------------------------------------------------------------- inputs


def _flat(lists: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, row of each element, elements) of a list column, vectorised."""
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    values = lists.explode(empty_as_null=False, keep_nulls=False).to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return lengths, rows, values


def _prepare_cases(cases: pl.DataFrame, n_items: int) -> pl.DataFrame:
    missing = [c for c in ("user_id", "history", "targets", "segment") if c not in cases.columns]
    if missing:
        raise XdrecError(
            f"evaluation cases lack column(s) {', '.join(missing)}: build them with Dataset.eval_cases"
        )
    # Relevance is a set; a user with nothing to predict has no defined metric, so is not a case.
    cases = cases.with_columns(targets=pl.col("targets").list.unique().list.sort()).filter(
        pl.col("targets").list.len() > 0
    )
    for column, low in (("history", 0), ("targets", 1)):
        values = cases[column].explode(empty_as_null=False, keep_nulls=False)
        if len(values) and (values.min() < low or values.max() > n_items):
            raise XdrecError(
                f"evaluation cases hold item ids outside {low}..{n_items} in {column!r}: "
                "the cases and the model come from different datasets or domains"
            )
    return cases


def _input_device(scorer: Scorer, device: torch.device | str | None) -> torch.device:
    """Inputs go to `device`, else the scorer's parameters' device, else its `.device`, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(scorer, torch.nn.Module):
        tensor = next(itertools.chain(scorer.parameters(), scorer.buffers()), None)
        if tensor is not None:
            return tensor.device
    own = getattr(scorer, "device", None)
    return torch.device(own) if isinstance(own, str | torch.device) else torch.device("cpu")


# ---------------------------------------------------------------------------------------------- negatives


def _negative_block(
    history: pl.Series, targets: pl.Series, n_items: int, negatives: int, seed: int, block: int
) -> np.ndarray:
    """(rows, negatives) item ids for one block of users, sorted; 0 where a user has too few eligible items.

    Rejection first: draw item ids with replacement and keep each row's first `negatives` distinct eligible
    ones in order of appearance, a uniform sample without replacement (the draws are exchangeable), in
    O(negatives) per user rather than O(n_items). Rows left short (large histories, tiny catalogues) are
    drawn exactly: uniform keys per item, excluded items pushed past every real key, the `negatives`
    smallest kept. Rows that succeed are uniform given success by symmetry, so the mixture is uniform.
    """
    rng = np.random.default_rng([seed, block])
    rows = len(history)
    (_, h_rows, h_items), (_, t_rows, t_items) = _flat(history), _flat(targets)
    ex_rows, ex_items = np.concatenate([h_rows, t_rows]), np.concatenate([h_items, t_items])
    width = n_items + 1
    out = np.zeros((rows, negatives), dtype=np.int64)
    short = np.ones(rows, dtype=bool)
    draws = int(_DRAW_FACTOR * negatives) + int(np.bincount(ex_rows, minlength=rows).max(initial=0))
    if draws < width // 2:
        drawn = rng.integers(1, width, size=(rows, draws))
        codes = np.arange(rows)[:, None] * width + drawn  # (row, item) as one integer, for set operations
        first = np.zeros(codes.size, dtype=bool)
        first[np.unique(codes, return_index=True)[1]] = True
        keep = first.reshape(rows, draws) & ~np.isin(codes, ex_rows * width + ex_items)
        keep &= np.cumsum(keep, axis=1) <= negatives
        short = keep.sum(1) < negatives
        out[~short] = drawn[~short][keep[~short]].reshape(-1, negatives)
    if short.any():
        keys = rng.random((int(short.sum()), width), dtype=np.float32)
        keys[:, 0] = 2.0
        in_short = short[ex_rows]
        keys[(np.cumsum(short) - 1)[ex_rows[in_short]], ex_items[in_short]] = 2.0
        picked = np.argpartition(keys, negatives - 1, axis=1)[:, :negatives]
        picked[np.take_along_axis(keys, picked, axis=1) >= 1.0] = 0
        out[short] = picked
    return np.sort(out, axis=1)


class _NegativeSampler:
    """Negatives for any row range of `cases`, generated in fixed blocks of users seeded by (seed, block).

    Fixed blocks make the draw independent of the evaluation batch size; generating them lazily keeps memory
    at one block instead of users x negatives.
    """

    def __init__(self, cases: pl.DataFrame, n_items: int, negatives: int, seed: int) -> None:
        self.cases, self.n_items, self.negatives, self.seed = cases, n_items, negatives, seed
        self.block_size = max(1, _NEGATIVE_BLOCK_KEYS // (n_items + 1))
        self._cached: tuple[int, np.ndarray] | None = None

    def _block(self, block: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != block:
            part = self.cases.slice(block * self.block_size, self.block_size)
            drawn = _negative_block(
                part["history"], part["targets"], self.n_items, self.negatives, self.seed, block
            )
            self._cached = (block, drawn)
        return self._cached[1]

    def rows(self, start: int, stop: int) -> np.ndarray:
        size = self.block_size
        parts = [
            self._block(b)[max(start, b * size) - b * size : min(stop, (b + 1) * size) - b * size]
            for b in range(start // size, (stop - 1) // size + 1)
        ]
        return np.concatenate(parts)


def _check_negatives(negatives: int | None, n_items: int) -> None:
    if negatives is not None and not 1 <= negatives < n_items:
        raise XdrecError(
            f"negatives={negatives} must be between 1 and {n_items - 1} (the domain has {n_items} items); "
            "leave it out to rank all items"
        )


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise XdrecError(f"seed must be a non-negative integer, got {seed}")


def sample_negatives(cases: pl.DataFrame, n_items: int, negatives: int, seed: int = 0) -> torch.Tensor:
    """(users, negatives) long: the sampled-N negatives of each row of `cases` (0 = none left), sorted.

    Exactly what `per_user_metrics(..., negatives=N, seed=seed)` ranks against; exposed for inspection.
    """
    _check_negatives(negatives, n_items)
    _check_seed(seed)
    cases = _prepare_cases(cases, n_items)
    if cases.height == 0:
        return torch.zeros((0, negatives), dtype=torch.long)
    return torch.from_numpy(_NegativeSampler(cases, n_items, negatives, seed).rows(0, cases.height))


# ---------------------------------------------------------------------------------------------- ranking


def _count_above_full(scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """(B, T): per relevant score, how many non-relevant candidates score >= it. Overwrites `scores`.

    `scores` holds NaN at every non-candidate and relevant item (NaN >= x is false, so they never count).
    """
    batch, n_targets = target_scores.shape
    if n_targets <= _COMPARE_MAX_TARGETS:
        # One (B, n_items) boolean at a time: the cheapest pass for leave-one-out's single target. (An int32
        # sum is about twice as fast as the default int64 one on CPU; counts are below 2**31.)
        counts = [(scores >= target_scores[:, t, None]).sum(1, dtype=torch.int32) for t in range(n_targets)]
        return torch.stack(counts, dim=1).long()
    # Many targets: put every candidate in the bucket between consecutive (sorted) relevant scores with one
    # batched binary search, count candidates per bucket, and suffix-sum: O(n_items log T) per user, and
    # only one (B, n_items) int32 beside the scores.
    excluded = scores.isnan()
    n_candidates = scores.shape[1] - excluded.sum(1, keepdim=True)
    scores.masked_fill_(excluded, -torch.inf)  # below every finite threshold, like a real -inf score
    thresholds, order = target_scores.sort(dim=1)
    bucket = torch.searchsorted(thresholds, scores, side="right", out_int32=True)  # thresholds <= score
    bucket += (torch.arange(batch, dtype=torch.int32, device=scores.device) * (n_targets + 1))[:, None]
    per_bucket = torch.bincount(bucket.view(-1), minlength=batch * (n_targets + 1)).view(batch, n_targets + 1)
    # A candidate in bucket j scores >= the j smallest thresholds: sorted threshold i counts buckets > i.
    at_least = per_bucket.flip(1).cumsum(1).flip(1)[:, 1:]
    above = torch.empty_like(at_least).scatter_(1, order, at_least)
    # A relevant score of -inf ties every candidate (the -inf stand-ins included): all of them rank above it.
    return torch.where(target_scores == -torch.inf, n_candidates, above)


def _count_above_chunked(
    users: torch.Tensor, items: torch.Tensor, history: torch.Tensor, targets: torch.Tensor, keep_seen: bool
) -> torch.Tensor:
    """`_count_above_full` for scores users @ items.T, a chunk of items at a time, in bounded memory.

    Two passes over the same chunks: the first picks out the relevant items' scores, the second counts
    the candidates at or above them (counts add up over chunks). Both take every score from the same
    chunked product, so a relevant item and a candidate tied with it compare exactly as in one matrix.
    """
    batch, n_cols = users.shape[0], items.shape[0]
    chunk = max(1, _SCORE_ELEMENTS // max(batch, 1))
    dtype = torch.float64 if users.dtype == torch.float64 else torch.float32

    def chunk_scores(first: int) -> torch.Tensor:  # as _rank_batches treats a whole score matrix
        raw = users @ items[first : first + chunk].T
        return raw.to(dtype).nan_to_num_(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)

    def inside(ids: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, slot, column in the chunk) of the ids that fall in the chunk starting at `first`."""
        rows, slots = ((ids >= first) & (ids < first + chunk)).nonzero(as_tuple=True)
        return rows, slots, ids[rows, slots] - first

    target_scores = torch.empty(targets.shape, dtype=dtype, device=users.device)
    for first in range(0, n_cols, chunk):
        rows, slots, cols = inside(targets, first)
        if len(rows):
            target_scores[rows, slots] = chunk_scores(first)[rows, cols]
    above = torch.zeros(targets.shape, dtype=torch.long, device=users.device)
    for first in range(0, n_cols, chunk):
        scores = chunk_scores(first)
        if first == 0:
            scores[:, 0] = torch.nan  # padding is never a candidate
        for ids in (targets,) if keep_seen else (history, targets):
            rows, _, cols = inside(ids, first)
            scores[rows, cols] = torch.nan
        above += _count_above_full(scores, target_scores)
    return above


def _positions(above: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T) 1-based ranks of the relevant items, best first (invalid slots after the valid ones).

    Fewer non-relevant items above means a higher score, so sorting the counts ascending lists the relevant
    items in descending score order; the k-th of them then sits at 1 + k + its count (see module docstring).
    """
    sentinel = torch.iinfo(torch.int64).max // 4
    counts = torch.where(valid, above, torch.full_like(above, sentinel)).sort(dim=1).values
    return 1 + torch.arange(counts.shape[1], device=counts.device) + counts


def _metrics_from_positions(
    positions: torch.Tensor, n_relevant: torch.Tensor, ks: Sequence[int]
) -> np.ndarray:
    """(B, 3 * len(ks) + 1) float64 in `metric_names(ks)` order, from CPU positions (B, T) and R (B,)."""
    positions = positions.to(torch.float64)
    valid = torch.arange(positions.shape[1]) < n_relevant[:, None]  # (B, T): the first R sorted slots
    cutoffs = torch.tensor(ks, dtype=torch.float64)
    hit = valid[:, :, None] & (positions[:, :, None] <= cutoffs)  # (B, T, nK)
    hits = hit.sum(1).to(torch.float64)  # (B, nK)
    dcg = (hit * (1.0 / torch.log2(positions + 1.0))[:, :, None]).sum(1)
    ideal = torch.cumsum(1.0 / torch.log2(torch.arange(2, max(ks) + 2, dtype=torch.float64)), 0)
    idcg = ideal[torch.minimum(n_relevant[:, None], torch.tensor(ks)) - 1]  # (B, nK)
    hr, recall, ndcg = (hits > 0).to(torch.float64), hits / n_relevant[:, None], dcg / idcg
    mrr = 1.0 / positions[:, 0]
    per_k = torch.stack([hr, ndcg, recall], dim=2).reshape(len(positions), -1)  # (B, nK * 3): k-major
    return torch.cat([per_k, mrr[:, None]], dim=1).numpy()


def _rank_batches(
    scorer: Scorer,
    cases: pl.DataFrame,
    rows: tuple[int, int],
    n_items: int,
    ks: tuple[int, ...],
    keep_seen: bool,
    sampler: _NegativeSampler | None,
    batch_size: int,
    inputs_on: torch.device,
    on_batch: Update | None = None,
) -> list[np.ndarray]:
    """Score and rank `cases[start:stop]` (`rows`) batch by batch: one (batch, n_metrics) float64 array
    per batch. The sampler's rows are the cases' own positions, whatever the range. `on_batch(done, total)`
    hears of each batch ranked."""
    values = []
    first, stop = rows
    with torch.no_grad():
        for start in range(first, stop, batch_size):
            if on_batch is not None:
                on_batch(start - first, stop - first)
            batch = cases.slice(start, min(batch_size, stop - start))
            user_ids = torch.from_numpy(batch["user_id"].to_numpy().astype(np.int64)).to(inputs_on)
            history = pad_left(batch["history"]).to(inputs_on)
            if (
                sampler is None
                and isinstance(scorer, FactoredScorer)
                and batch.height * (n_items + 1) > _SCORE_ELEMENTS
            ):
                users, items = scorer.user_vectors(user_ids, history), scorer.item_vectors()
                if items.shape[0] != n_items + 1:
                    raise XdrecError(
                        f"model {scorer.name!r} scores {items.shape[0] - 1} items but the domain has "
                        f"{n_items}: was it trained on this dataset and domain?"
                    )
                targets = pad_left(batch["targets"]).to(users.device)
                above = _count_above_chunked(users, items, history.to(users.device), targets, keep_seen)
                positions = _positions(above, targets > 0).cpu()
                values.append(_metrics_from_positions(positions, (targets > 0).sum(1).cpu(), ks))
                continue
            raw = scorer.scores(user_ids, history)
            if tuple(raw.shape) != (batch.height, n_items + 1):
                raise XdrecError(
                    f"model {scorer.name!r} scored {tuple(raw.shape)[-1] - 1} items but the domain has "
                    f"{n_items}: was it trained on this dataset and domain?"
                )
            on = raw.device
            # Our own copy: the ranking edits scores in place, and a scorer may hand out a cached tensor.
            dtype = torch.float64 if raw.dtype == torch.float64 else torch.float32
            scores = raw.to(dtype=dtype, copy=True).nan_to_num_(
                nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf
            )
            del raw
            targets = pad_left(batch["targets"]).to(on)  # (B, T), 0 = padding
            valid = targets > 0
            target_scores = scores.gather(1, targets)  # (B, T)
            if sampler is None:
                # Non-candidates and relevant items become NaN, which never counts as ranked above.
                scores[:, 0] = torch.nan
                if not keep_seen:
                    scores.scatter_(1, history.to(on), torch.nan)  # history padding hits column 0 again
                scores.scatter_(1, targets, torch.nan)
                above = _count_above_full(scores, target_scores)
            else:
                drawn = torch.from_numpy(sampler.rows(start, start + batch.height)).to(on)  # (B, N)
                negative_scores = scores.gather(1, drawn).masked_fill_(drawn == 0, torch.nan)
                above = (negative_scores[:, None, :] >= target_scores[:, :, None]).sum(2)  # (B, T)
            del scores
            positions = _positions(above, valid).cpu()
            values.append(_metrics_from_positions(positions, valid.sum(1).cpu(), ks))
    if on_batch is not None:
        on_batch(stop - first, stop - first)
    return values


def per_user_metrics(
    scorer: Scorer,
    cases: pl.DataFrame,
    n_items: int,
    ks: Sequence[int] = (10,),
    *,
    keep_seen: bool = False,
    negatives: int | None = None,
    seed: int = 0,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    sharded: bool = False,
    on_batch: Update | None = None,
) -> pl.DataFrame:
    """Rank the domain's items for every case and score the ranking (definitions: module docstring).

    cases:    `Dataset.eval_cases(domain, stage)` (user_id, history, targets, segment); users without
              targets are skipped.
    n_items:  the evaluated domain's item count (`Dataset.n_items`); scorers return n_items + 1 columns.
    returns:  one row per user: user_id, segment, protocol ('full' | 'sampled-N'), then per K
              HR@K, NDCG@K, Recall@K, and MRR (float64).

    Users go through the scorer `batch_size` at a time, so memory is bounded however large the catalogue:
    the scorer's (batch_size, n_items + 1) scores, one float copy of them that the ranking edits in place,
    and at most about one more matrix of that size of booleans / int32 bucket ids while counting. Inputs go
    to `device` (default: the scorer's parameters' device, else CPU); ranking runs wherever the scores come
    back. A scorer that is an `nn.Module` is put in eval mode (no dropout) for the call and restored after.

    sharded: under torchrun (`xdrec.distributed`), every rank ranks its contiguous share of the users and
    the shares are gathered, so each rank returns the whole frame a single process returns (the same rows
    and negatives; the same values up to float rounding of differently composed batches). Every rank
    must then make the same call. Without a process group it changes nothing.

    on_batch: called with (users ranked, users to rank) before each batch and once at the end (this
    process's share under torchrun): a progress display's hook.
    """
    ks = _check_ks(ks)
    if batch_size < 1:
        raise XdrecError(f"batch size must be at least 1, got {batch_size}")
    _check_negatives(negatives, n_items)
    _check_seed(seed)
    cases = _prepare_cases(cases, n_items)
    names = metric_names(ks)
    protocol = protocol_name(negatives)
    sampler = _NegativeSampler(cases, n_items, negatives, seed) if negatives is not None else None
    inputs_on = _input_device(scorer, device)

    was_training = isinstance(scorer, torch.nn.Module) and scorer.training
    if was_training:
        scorer.eval()  # type: ignore[attr-defined]
    rows = distributed.share(cases.height) if sharded else (0, cases.height)
    try:
        values = _rank_batches(
            scorer, cases, rows, n_items, ks, keep_seen, sampler, batch_size, inputs_on, on_batch
        )
    finally:
        if was_training:
            scorer.train()  # type: ignore[attr-defined]

    matrix = np.concatenate(values) if values else np.zeros((0, len(names)))
    if sharded and distributed.active():  # the shares in rank order: the cases in order
        matrix = np.concatenate(distributed.gather(matrix))
    keys = cases.select(
        "user_id", pl.col("segment").cast(pl.String), protocol=pl.lit(protocol, dtype=pl.String)
    )
    return keys.hstack(pl.DataFrame(matrix, schema={name: pl.Float64 for name in names}, orient="row"))


# ---------------------------------------------------------------------------------------------- summaries


def _bootstrap_ci(
    values: np.ndarray, replicates: int, rng: np.random.Generator, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the column means of `values` (users x metrics)."""
    n, m = values.shape
    means = np.empty((replicates, m))
    chunk = max(1, _BOOTSTRAP_ELEMENTS // (n * m))
    for start in range(0, replicates, chunk):
        size = min(chunk, replicates - start)
        resampled = rng.integers(0, n, size=(size, n))  # one row of user indices per replicate
        means[start : start + size] = values[resampled].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return low, high


def summarize(
    per_user: pl.DataFrame,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    with_all: bool = True,
) -> pl.DataFrame:
    """Per-segment means with percentile bootstrap CIs, from `per_user_metrics` output.

    returns: one row per segment present plus, with_all, `all` (every user not in `cold`; omitted when
             there is none),
             in report order: segment, users, protocol, then per metric M: M, M_lo, M_hi
             (lo/hi null when bootstrap=0). Each segment's resampling is seeded by (seed, segment name),
             so its interval does not change when other segments come or go.
    """
    if bootstrap < 0:
        raise XdrecError(f"bootstrap must be a non-negative number of replicates, got {bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise XdrecError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    _check_seed(seed)
    protocols = per_user["protocol"].unique().to_list() if "protocol" in per_user.columns else [FULL]
    if len(protocols) > 1:
        raise XdrecError(
            f"per-user metrics mix protocols ({', '.join(sorted(protocols))}): summarize each one separately"
        )
    protocol = protocols[0] if protocols else FULL
    metrics = [c for c in per_user.columns if c not in KEY_COLUMNS]

    rows = []
    for segment, group in _segment_groups(per_user, with_all):
        if group.height == 0:
            continue
        values = group.select(metrics).to_numpy().astype(np.float64)
        row: dict[str, object] = {"segment": segment, "users": group.height, "protocol": protocol}
        if bootstrap:
            rng = np.random.default_rng([seed, zlib.crc32(segment.encode())])
            low, high = _bootstrap_ci(values, bootstrap, rng, confidence)
        else:
            low = high = [None] * len(metrics)
        for name, mean, lo, hi in zip(metrics, values.mean(axis=0), low, high, strict=True):
            row |= {name: float(mean), f"{name}_lo": _float(lo), f"{name}_hi": _float(hi)}
        rows.append(row)
    schema: dict[str, pl.DataType] = {"segment": pl.String(), "users": pl.Int64(), "protocol": pl.String()}
    schema |= {f"{m}{suffix}": pl.Float64() for m in metrics for suffix in ("", "_lo", "_hi")}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _segment_groups(per_user: pl.DataFrame, with_all: bool = True) -> list[tuple[str, pl.DataFrame]]:
    """(segment, its rows) for `all` (every user not cold; unless not with_all) and each segment present,
    in report order."""
    groups = [(ALL_SEGMENT, per_user.filter(pl.col("segment") != COLD_SEGMENT))] if with_all else []
    segments = sorted(per_user["segment"].drop_nulls().unique().to_list(), key=segment_sort_key)
    return groups + [(s, per_user.filter(pl.col("segment") == s)) for s in segments]


def baseline_for(segment: str, role: str) -> str:
    """The model a segment's paired delta is measured against (module docstring): popularity for cold
    users, the evaluated domain's single-domain SASRec (`target-only` for the target) for the others."""
    return COLD_BASELINE if segment == COLD_SEGMENT else f"{role}-only"


def paired_deltas(
    per_user: dict[str, pl.DataFrame],
    role: str,
    metric: str,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    with_all: bool = True,
) -> pl.DataFrame:
    """Each model's paired difference in `metric` from its segment's baseline, with a bootstrap CI.

    per_user: model name -> `per_user_metrics` output, every frame on the same cases (same users, same
              order), as `evaluate_scorers` makes them.
    returns:  model, segment, delta_against (the baseline's name), delta, delta_lo, delta_hi; delta is null
              when the baseline is not among the models (nothing is invented in its place), lo/hi are
              null with bootstrap=0. A model against itself has delta 0 and CI [0, 0].
    """
    if bootstrap < 0:
        raise XdrecError(f"bootstrap must be a non-negative number of replicates, got {bootstrap}")
    _check_seed(seed)
    users = {name: frame["user_id"] for name, frame in per_user.items()}
    if any(not u.equals(next(iter(users.values()))) for u in users.values()):
        raise XdrecError("paired comparisons need every model's metrics on the same users, in one order")
    rows = []
    for name, frame in per_user.items():
        for segment, group in _segment_groups(frame.select("user_id", "segment", metric), with_all):
            if group.height == 0:
                continue  # as in `summarize`: a segment without users has no row
            against = baseline_for(segment, role)
            row = {"model": name, "segment": segment, "delta_against": against}
            row |= {"delta": None, "delta_lo": None, "delta_hi": None}
            if against in per_user:
                base = per_user[against].join(group.select("user_id"), on="user_id", how="semi")
                diff = (group[metric].to_numpy() - base[metric].to_numpy()).astype(np.float64)
                row["delta"] = float(diff.mean())
                if bootstrap:
                    # Seeded by segment only: every model of a segment is resampled with the same users.
                    rng = np.random.default_rng([seed, zlib.crc32(segment.encode()), 1])
                    low, high = _bootstrap_ci(diff[:, None], bootstrap, rng, confidence)
                    row |= {"delta_lo": float(low[0]), "delta_hi": float(high[0])}
            rows.append(row)
    schema = {"model": pl.String, "segment": pl.String, "delta_against": pl.String}
    return pl.DataFrame(rows, schema=schema | {c: pl.Float64 for c in ("delta", "delta_lo", "delta_hi")})


def _relations(
    scorers: Sequence[Scorer],
    per_user: dict[str, pl.DataFrame],
    cases: pl.DataFrame,
    *,
    with_all: bool = True,
) -> pl.DataFrame:
    """model, segment, same_as, scored: what a row is besides its numbers (see `Report.rows`).

    `scored` is False for a `history_only` scorer on a segment where no user has history in the domain.
    `same_as` names the model a scorer `defers_to` when, on the segment's users, every per-user metric of
    the two is identical: declared and checked, so a coincidence never claims it and a claim never hides
    a difference."""
    empty = cases.filter(pl.col("history").list.len() == 0).select("user_id")
    by_name = {s.name: s for s in scorers}
    rows = []
    for name, frame in per_user.items():
        scorer = by_name[name]
        other = getattr(scorer, "defers_to", None)
        metrics = [c for c in frame.columns if c not in KEY_COLUMNS]
        for segment, group in _segment_groups(frame, with_all):
            if group.height == 0:
                continue
            without = group.join(empty, on="user_id", how="semi").height
            scored = not (getattr(scorer, "history_only", False) and without == group.height)
            same = None
            if other in per_user and other != name and without == 0:
                theirs = per_user[other].join(group.select("user_id"), on="user_id", how="semi")
                if group.select(metrics).equals(theirs.select(metrics)):
                    same = other
            rows.append({"model": name, "segment": segment, "same_as": same, "scored": scored})
    schema = {"model": pl.String, "segment": pl.String, "same_as": pl.String, "scored": pl.Boolean}
    return pl.DataFrame(rows, schema=schema)


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- reports


@dataclass(frozen=True, eq=False)
class Report:
    """Every model's per-segment summary on one domain and split, under one protocol.

    rows: model, domain, segment, users, protocol, then per metric M: M, M_lo, M_hi, then the paired
          comparison of the headline metric with the segment's baseline (`paired_deltas`): delta_against,
          delta, delta_lo, delta_hi; then `same_as` (the model whose scores this one gives the segment's
          users, else null) and `scored` (False: the model cannot rank these users, and every number of
          the row is null); segments in report order, models in the order they were given within each
          segment.
    """

    domain: str
    stage: str
    n_items: int
    ks: tuple[int, ...]
    negatives: int | None
    rows: pl.DataFrame
    confidence: float = 0.95
    bootstrap: int = 1000
    absent: tuple[dict[str, str], ...] = ()  # models left out, each {"model", "reason", "fix"} (store.py)
    other: str = ""  # the dataset's other domain: where the transfer comes from

    @property
    def protocol(self) -> str:
        return protocol_name(self.negatives)

    @property
    def empty(self) -> bool:
        """No user has anything to predict at this stage in this domain: there are no numbers to show."""
        return self.rows.height == 0

    @property
    def sampled(self) -> bool:
        return self.negatives is not None

    @property
    def metrics(self) -> list[str]:
        return metric_names(self.ks)

    @property
    def headline(self) -> str:
        """The metric that decides which model wins a segment: NDCG at the first K."""
        return f"NDCG@{self.ks[0]}"

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.rows["model"].to_list()))

    @property
    def segments(self) -> list[str]:
        return sorted(self.rows["segment"].unique().to_list(), key=segment_sort_key)


def _unique_names(scorers: Iterable[Scorer]) -> None:
    names = [s.name for s in scorers]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise XdrecError(
            f"two models are named {', '.join(map(repr, duplicated))}: give each a distinct name"
        )


@dataclass(frozen=True)
class EvaluateConfig:
    """How models are ranked and summarised: the options of `xdrec evaluate` and of `run`'s evaluation."""

    ks: tuple[int, ...] = (10,)  # cut-offs of HR/NDCG/Recall; the first one's NDCG is the headline
    negatives: int | None = None  # sampled-N (papers only); None: full ranking, the headline protocol
    keep_seen: bool = False  # rank the user's own history items too
    seed: int = 0  # sampled negatives and bootstrap resampling
    bootstrap: int = 1000  # resamples for the 95% CIs (0: none)
    batch_size: int = 512  # users scored at a time
    device: str = "auto"  # where inputs go: auto = each model's own device
    by_history: bool = False  # also report the warm users by their history's length (HISTORY_SEGMENTS)

    def __post_init__(self) -> None:
        # Checked before any work, not after an hour of training in `run`.
        object.__setattr__(self, "ks", _check_ks(self.ks))
        if self.negatives is not None and self.negatives < 1:
            raise OptionError(f"--negatives must be at least 1, got {self.negatives}")
        if self.bootstrap < 0:
            raise OptionError(f"--bootstrap must be 0 or more, got {self.bootstrap}")
        if self.batch_size < 1:
            raise XdrecError(f"batch size must be at least 1, got {self.batch_size}")
        _check_seed(self.seed)
        resolve_device(self.device)  # --device cuda without a GPU: said before any work


def evaluate_scorers(
    dataset: Dataset,
    domain: str,
    scorers: Sequence[Scorer],
    config: EvaluateConfig = EvaluateConfig(),
    *,
    stage: Literal["valid", "test"] = "test",
    with_popularity: bool = True,
    progress: bool = False,
) -> Report:
    """Evaluate every scorer on `domain`'s `stage` split and summarise per segment.

    The popularity baseline is added first unless a scorer is already named 'popularity' or
    with_popularity=False, so every report shows how far the models are above it. All scorers see the same
    cases and, under sampled-N, the same negatives, so each row also carries its paired delta of the
    headline metric against the segment's baseline (`paired_deltas`).

    Under torchrun every rank calls it and ranks its share of the users (`per_user_metrics`'s `sharded`);
    each gets the whole report. progress: a bar per model on stderr (users ranked, time taken).
    """
    dataset.check_domain(domain)
    ks, negatives, bootstrap, seed = config.ks, config.negatives, config.bootstrap, config.seed
    device = None if config.device == "auto" else config.device
    scorers = list(scorers)
    if with_popularity and all(s.name != PopularityScorer.name for s in scorers):
        scorers.insert(0, PopularityScorer.from_dataset(dataset, domain))
    if not scorers:
        raise XdrecError("nothing to evaluate: give at least one model")
    _unique_names(scorers)
    n_items = dataset.n_items(domain)
    cases = dataset.eval_cases(domain, stage)  # none at all: every summary is empty, so is the report

    summaries, per_users = [], {}
    for scorer in scorers:
        with counting(f"evaluate {scorer.name} on {domain}", "users", enabled=progress) as update:
            per_user = per_user_metrics(
                scorer, cases, n_items, ks, keep_seen=config.keep_seen, negatives=negatives, seed=seed,
                batch_size=config.batch_size, device=device, sharded=True, on_batch=update,
            )  # fmt: skip
        per_users[scorer.name] = per_user
        summary = summarize(per_user, bootstrap=bootstrap, seed=seed)
        summaries.append(
            summary.select(pl.lit(scorer.name).alias("model"), pl.lit(domain).alias("domain"), pl.all())
        )
    headline, role = f"NDCG@{ks[0]}", dataset.role(domain)
    deltas = paired_deltas(per_users, role, headline, bootstrap=bootstrap, seed=seed)
    if config.by_history and cases.height:
        # The same per-user rows again under their history segment (no `all`: it would repeat warm's).
        segments = history_segments(cases).select("user_id", by_history=pl.col("segment"))
        regrouped = {
            name: per_user.join(segments, on="user_id")
            .with_columns(segment=pl.col("by_history"))
            .drop("by_history")
            for name, per_user in per_users.items()
        }
        summaries += [
            summarize(per_user, bootstrap=bootstrap, seed=seed, with_all=False).select(
                pl.lit(name).alias("model"), pl.lit(domain).alias("domain"), pl.all()
            )
            for name, per_user in regrouped.items()
        ]
        extra = paired_deltas(regrouped, role, headline, bootstrap=bootstrap, seed=seed, with_all=False)
        deltas = pl.concat([deltas, extra])
    relations = _relations(scorers, per_users, cases)
    if config.by_history and cases.height:
        relations = pl.concat([relations, _relations(scorers, regrouped, cases, with_all=False)])
    rows = (
        pl.concat(summaries)
        .join(deltas, on=("model", "segment"), how="left", maintain_order="left")
        .join(relations, on=("model", "segment"), how="left", maintain_order="left")
    )
    # A model that cannot rank a segment's users has no numbers there (not a row of zeros, not a loss).
    numbers = [f"{m}{end}" for m in metric_names(ks) for end in ("", "_lo", "_hi")]
    numbers += ["delta", "delta_lo", "delta_hi"]
    rows = rows.with_columns(
        pl.when(pl.col("scored")).then(pl.col(c)).otherwise(None).alias(c) for c in numbers
    )
    # Group by segment, keeping the given model order inside each group.
    order = {segment: i for i, segment in enumerate(sorted(rows["segment"].unique(), key=segment_sort_key))}
    rows = (
        rows.with_row_index("_given").sort(pl.col("segment").replace_strict(order), "_given").drop("_given")
    )
    return Report(
        domain=domain,
        other=next((d for d in dataset.domains if d != domain), ""),
        stage=stage,
        n_items=n_items,
        ks=ks,
        negatives=negatives,
        rows=rows,
        bootstrap=bootstrap,
    )
