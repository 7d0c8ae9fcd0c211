"""Ranking metrics against a brute-force reference, masking, batching, sampled negatives, bootstrap CIs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from xdrec import evaluation
from xdrec.errors import XdrecError
from xdrec.evaluation import metric_names, per_user_metrics, sample_negatives, summarize
from xdrec.scoring import pad_left

CASE_SCHEMA = {
    "user_id": pl.Int32,
    "history": pl.List(pl.Int32),
    "targets": pl.List(pl.Int32),
    "segment": pl.String,
}


class MatrixScorer:
    """Scores looked up by user id in a fixed (users, n_items + 1) matrix."""

    def __init__(self, matrix: torch.Tensor, name: str = "matrix") -> None:
        self.matrix, self.name = matrix, name

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.matrix[user_ids]


def make_cases(
    history: list[list[int]], targets: list[list[int]], segments: list[str] | None = None
) -> pl.DataFrame:
    segments = segments or ["warm"] * len(history)
    return pl.DataFrame(
        {"user_id": list(range(len(history))), "history": history, "targets": targets, "segment": segments},
        schema=CASE_SCHEMA,
    )


def random_problem(seed: int, users: int = 40, n_items: int = 12) -> tuple[torch.Tensor, pl.DataFrame]:
    """Integer scores in 0..3 (many ties), a few NaN/inf, 1-4 targets, histories that overlap the targets."""
    rng = np.random.default_rng(seed)
    matrix = torch.from_numpy(rng.integers(0, 4, size=(users, n_items + 1)).astype(np.float32))
    special = rng.random(matrix.shape) < 0.04
    matrix[torch.from_numpy(special)] = torch.tensor(
        rng.choice([np.nan, np.inf, -np.inf], size=int(special.sum())), dtype=torch.float32
    )
    history = [
        rng.choice(np.arange(1, n_items + 1), size=rng.integers(0, 6), replace=True).tolist()
        for _ in range(users)
    ]
    targets = [
        rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 5), replace=False).tolist()
        for _ in range(users)
    ]
    for row in range(0, users, 3):  # repeat consumption: a relevant item also in the input history
        history[row].append(targets[row][0])
    segments = rng.choice(["warm", "cold", "target-only"], size=users).tolist()
    return matrix, make_cases(history, targets, segments)


def reference(
    scores: list[float],
    history: list[int],
    targets: list[int],
    n_items: int,
    ks: tuple[int, ...],
    keep_seen: bool,
    negatives: list[int] | None = None,
) -> list[float]:
    """The module docstring's definitions, literally: sort all candidates, ties non-relevant first."""
    relevant = set(targets)
    if negatives is None:
        candidates = [i for i in range(1, n_items + 1) if keep_seen or i in relevant or i not in set(history)]
    else:
        candidates = sorted(relevant) + [i for i in negatives if i != 0]

    def score(i: int) -> float:
        return -math.inf if math.isnan(scores[i]) else scores[i]

    order = sorted(candidates, key=lambda i: (-score(i), i in relevant))
    ranks = [position + 1 for position, item in enumerate(order) if item in relevant]
    out = []
    for k in ks:
        hits = [r for r in ranks if r <= k]
        ideal = sum(1 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
        out += [float(bool(hits)), sum(1 / math.log2(r + 1) for r in hits) / ideal, len(hits) / len(relevant)]
    return [*out, 1 / ranks[0]]


def reference_frame(matrix, cases, n_items, ks, keep_seen, negatives=None) -> np.ndarray:
    rows = cases.iter_rows(named=True)
    drawn = negatives.tolist() if negatives is not None else [None] * cases.height
    return np.array(
        [
            reference(matrix[r["user_id"]].tolist(), r["history"], r["targets"], n_items, ks, keep_seen, d)
            for r, d in zip(rows, drawn, strict=True)
        ]
    )


@pytest.mark.parametrize("keep_seen", [False, True])
@pytest.mark.parametrize("path", ["compare", "bucket"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranking_matches_bruteforce(monkeypatch, keep_seen: bool, path: str, seed: int) -> None:
    # Force one counting strategy for every user (random_problem has 1-4 targets per user).
    monkeypatch.setattr(evaluation, "_COMPARE_MAX_TARGETS", 100 if path == "compare" else 0)
    ks = (1, 3, 5, 20)
    matrix, cases = random_problem(seed)
    got = per_user_metrics(MatrixScorer(matrix), cases, 12, ks, keep_seen=keep_seen, batch_size=16)
    assert got.columns == ["user_id", "segment", "protocol", *metric_names(ks)]
    assert got["protocol"].unique().to_list() == ["full"]
    assert got["segment"].to_list() == cases["segment"].to_list()
    expected = reference_frame(matrix, cases, 12, ks, keep_seen)
    np.testing.assert_allclose(got.select(metric_names(ks)).to_numpy(), expected, rtol=1e-12, atol=1e-12)


class FactoredMatrix(MatrixScorer):
    """Scores users @ items.T, also exposed as the factors (a FactoredScorer: chunked ranking)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor) -> None:
        super().__init__(users @ items.T, "factored")
        self.users, self.items = users, items

    def user_vectors(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.users[user_ids]

    def item_vectors(self) -> torch.Tensor:
        return self.items


@pytest.mark.parametrize("keep_seen", [False, True])
@pytest.mark.parametrize("path", ["compare", "bucket"])
def test_ranking_in_item_chunks_matches_the_whole_matrix(monkeypatch, keep_seen: bool, path: str) -> None:
    monkeypatch.setattr(evaluation, "_COMPARE_MAX_TARGETS", 100 if path == "compare" else 0)
    _, cases = random_problem(3)
    rng = np.random.default_rng(3)
    # Small integer factors: exact integer scores with many ties, so tie handling is exercised.
    users = torch.from_numpy(rng.integers(-2, 3, size=(40, 3)).astype(np.float32))
    items = torch.from_numpy(rng.integers(-2, 3, size=(13, 3)).astype(np.float32))
    ks = (1, 3, 5, 20)
    whole = per_user_metrics(MatrixScorer(users @ items.T), cases, 12, ks, keep_seen=keep_seen, batch_size=16)
    monkeypatch.setattr(evaluation, "_SCORE_ELEMENTS", 16 * 5)  # 16 users x 5 items: chunks 0-4, 5-9, 10-12
    calls: list[int] = []
    chunked = evaluation._count_above_chunked
    monkeypatch.setattr(
        evaluation,
        "_count_above_chunked",
        lambda *a: calls.append(1) or chunked(*a),  # type: ignore[func-returns-value]
    )
    got = per_user_metrics(FactoredMatrix(users, items), cases, 12, ks, keep_seen=keep_seen, batch_size=16)
    assert len(calls) == 3  # every batch of 16 users went through the chunked path
    assert_frame_equal(got, whole)
    expected = reference_frame(users @ items.T, cases, 12, ks, keep_seen)
    np.testing.assert_allclose(got.select(metric_names(ks)).to_numpy(), expected, rtol=1e-12, atol=1e-12)


def test_constant_scorer_gets_nothing_from_ties() -> None:
    n_items = 50
    cases = make_cases([[1, 2]] * 4, [[3], [4, 5], [6], [7]])
    got = per_user_metrics(MatrixScorer(torch.zeros(4, n_items + 1)), cases, n_items, (10,))
    assert got["HR@10"].sum() == 0
    # Ranked after every other candidate: 48 unmasked items minus the relevant ones.
    assert got["MRR"].to_list() == pytest.approx([1 / 48, 1 / 47, 1 / 48, 1 / 48])


def test_masking_removes_history_but_never_a_relevant_item() -> None:
    # Item 1 (history) scores highest, item 2 (relevant and also in the history) next, item 3 (relevant).
    matrix = torch.tensor([[0.0, 9.0, 8.0, 7.0, 1.0, 1.0]])
    cases = make_cases([[1, 2]], [[2, 3]])
    masked = per_user_metrics(MatrixScorer(matrix), cases, 5, (1, 2))
    row = masked.select("HR@1", "NDCG@2", "Recall@2", "MRR").row(0)
    assert row == pytest.approx((1.0, 1.0, 1.0, 1.0))
    seen = per_user_metrics(MatrixScorer(matrix), cases, 5, (1, 2), keep_seen=True)
    assert seen["MRR"].item() == pytest.approx(0.5)  # item 1 now ranks above both relevant items
    assert seen["Recall@2"].item() == pytest.approx(0.5)


def test_nan_scores_rank_last() -> None:
    matrix = torch.tensor([[0.0, float("nan"), -5.0, -6.0]])
    got = per_user_metrics(MatrixScorer(matrix), make_cases([[]], [[1]]), 3, (1,))
    assert got["MRR"].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("negatives", [None, 4])
def test_batch_size_does_not_change_results(monkeypatch, negatives: int | None) -> None:
    # Small sampling blocks, so batches straddle several blocks of negatives.
    monkeypatch.setattr(evaluation, "_NEGATIVE_BLOCK_KEYS", 5 * 13)
    matrix, cases = random_problem(3)
    results = [
        per_user_metrics(MatrixScorer(matrix), cases, 12, (1, 5), negatives=negatives, seed=7, batch_size=b)
        for b in (1, 7, cases.height)
    ]
    assert_frame_equal(results[0], results[1])
    assert_frame_equal(results[0], results[2])


# (n_items, draw factor): 30 items send every user down the exact keys path, 300 the rejection path, and
# drawing too few (factor 0.5) leaves some users short, so one block mixes both.
SAMPLER_PATHS = [(30, 2), (300, 2), (60, 0.5)]


@pytest.mark.parametrize(("n_items", "factor"), SAMPLER_PATHS)
def test_sampled_negatives_are_seeded_and_exclude_history_and_targets(
    monkeypatch, n_items: int, factor: float
) -> None:
    monkeypatch.setattr(evaluation, "_DRAW_FACTOR", factor)
    _, cases = random_problem(4, users=60, n_items=n_items)
    drawn = sample_negatives(cases, n_items, 10, seed=5)
    assert drawn.shape == (60, 10)
    assert torch.equal(drawn, sample_negatives(cases, n_items, 10, seed=5))
    assert not torch.equal(drawn, sample_negatives(cases, n_items, 10, seed=6))
    for row, case in zip(drawn.tolist(), cases.iter_rows(named=True), strict=True):
        assert 0 not in row and len(set(row)) == 10 and max(row) <= n_items
        assert not set(row) & (set(case["history"]) | set(case["targets"]))


@pytest.mark.parametrize("factor", [2, 0.5])  # 0.5: ~650 of the 4000 users fall back to the exact path
def test_sampled_negatives_are_uniform(monkeypatch, factor: float) -> None:
    monkeypatch.setattr(evaluation, "_DRAW_FACTOR", factor)
    users, n_items, negatives = 4000, 50, 5
    cases = make_cases([[1, 2, 3]] * users, [[4]] * users)
    counts = np.bincount(sample_negatives(cases, n_items, negatives).view(-1).numpy(), minlength=n_items + 1)
    assert counts[:5].sum() == 0  # padding, history, target
    eligible = counts[5:]
    expected = users * negatives / len(eligible)  # 434.8; binomial sd ~ 20
    assert np.abs(eligible - expected).max() < 5 * np.sqrt(expected)


def test_sampled_uses_all_eligible_items_when_fewer_than_asked() -> None:
    cases = make_cases([[1, 2, 3]], [[4]])
    drawn = sample_negatives(cases, 6, 5, seed=0)
    assert sorted(drawn[0].tolist()) == [0, 0, 0, 5, 6]


@pytest.mark.parametrize(("n_items", "factor"), SAMPLER_PATHS)
def test_sampled_matches_bruteforce(monkeypatch, n_items: int, factor: float) -> None:
    monkeypatch.setattr(evaluation, "_DRAW_FACTOR", factor)
    ks = (1, 5)
    matrix, cases = random_problem(5, users=30, n_items=n_items)
    drawn = sample_negatives(cases, n_items, 8, seed=11)
    got = per_user_metrics(MatrixScorer(matrix), cases, n_items, ks, negatives=8, seed=11, batch_size=9)
    assert got["protocol"].unique().to_list() == ["sampled-8"]
    expected = reference_frame(matrix, cases, n_items, ks, False, drawn)
    np.testing.assert_allclose(got.select(metric_names(ks)).to_numpy(), expected, rtol=1e-12, atol=1e-12)


def test_user_errors_are_xdrec_errors() -> None:
    cases = make_cases([[1]], [[2]])
    with pytest.raises(XdrecError, match="scored 4 items"):
        per_user_metrics(MatrixScorer(torch.zeros(1, 5)), cases, 3)
    with pytest.raises(XdrecError, match="outside"):
        per_user_metrics(MatrixScorer(torch.zeros(1, 4)), make_cases([[1]], [[9]]), 3)
    with pytest.raises(XdrecError, match="negatives"):
        per_user_metrics(MatrixScorer(torch.zeros(1, 4)), cases, 3, negatives=3)
    with pytest.raises(XdrecError, match="positive"):
        per_user_metrics(MatrixScorer(torch.zeros(1, 4)), cases, 3, ks=(0,))
    with pytest.raises(XdrecError, match="column"):
        per_user_metrics(MatrixScorer(torch.zeros(1, 4)), cases.drop("segment"), 3)


def test_no_cases_gives_an_empty_frame_with_the_schema() -> None:
    got = per_user_metrics(MatrixScorer(torch.zeros(1, 4)), make_cases([], []), 3, (2,))
    assert got.height == 0 and got.columns == ["user_id", "segment", "protocol", *metric_names((2,))]


def per_user_frame(seed: int = 0, users: int = 300) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "user_id": np.arange(users, dtype=np.int32),
            "segment": rng.choice(["warm", "cold", "target-only"], size=users),
            "protocol": ["full"] * users,
            "NDCG@10": rng.random(users),
            "MRR": rng.random(users) ** 2,
        }
    )


def test_summarize_segments_all_excludes_cold() -> None:
    per_user = per_user_frame()
    summary = summarize(per_user, bootstrap=200)
    assert summary["segment"].to_list() == ["all", "warm", "cold", "target-only"]
    by = {row["segment"]: row for row in summary.iter_rows(named=True)}
    not_cold = per_user.filter(pl.col("segment") != "cold")
    assert by["all"]["users"] == not_cold.height
    assert by["all"]["NDCG@10"] == pytest.approx(not_cold["NDCG@10"].mean())
    cold = per_user.filter(pl.col("segment") == "cold")
    assert by["cold"]["users"] == cold.height and by["cold"]["MRR"] == pytest.approx(cold["MRR"].mean())
    for row in by.values():
        for metric in ("NDCG@10", "MRR"):
            assert row[f"{metric}_lo"] < row[metric] < row[f"{metric}_hi"]
    assert summary.columns[:3] == ["segment", "users", "protocol"]


def test_summarize_is_seeded() -> None:
    per_user = per_user_frame()
    assert_frame_equal(summarize(per_user, bootstrap=100, seed=3), summarize(per_user, bootstrap=100, seed=3))
    assert not summarize(per_user, bootstrap=100, seed=3).equals(summarize(per_user, bootstrap=100, seed=4))


def test_summarize_without_bootstrap_and_refusing_mixed_protocols() -> None:
    per_user = per_user_frame()
    plain = summarize(per_user, bootstrap=0)
    assert plain["NDCG@10_lo"].null_count() == plain.height
    mixed = per_user.with_columns(
        protocol=pl.when(pl.col("user_id") < 10).then(pl.lit("sampled-100")).otherwise(pl.col("protocol"))
    )
    with pytest.raises(XdrecError, match="mix protocols"):
        summarize(mixed)


def test_summarize_only_cold_users_has_no_all_row() -> None:
    per_user = per_user_frame().with_columns(segment=pl.lit("cold"))
    assert summarize(per_user, bootstrap=10)["segment"].to_list() == ["cold"]


def test_scorer_gets_left_padded_history_and_eval_mode() -> None:
    class Recorder(torch.nn.Module):
        name = "recorder"

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[tuple[torch.Tensor, bool]] = []

        def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            self.seen.append((history.clone(), self.training))
            return torch.zeros(len(user_ids), 8)

    histories = [[3, 1, 2], [], [7], [5, 6, 1, 2, 4]]
    model = Recorder().train()
    per_user_metrics(model, make_cases(histories, [[1]] * 4), 7, batch_size=2)
    assert [training for _, training in model.seen] == [False, False]  # no dropout while evaluating
    assert model.training  # restored for the training loop that called us
    assert torch.equal(model.seen[0][0], pad_left(histories[:2]))
    assert torch.equal(model.seen[1][0], pad_left(histories[2:]))
