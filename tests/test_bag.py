"""`bag`: its loss against a brute-force likelihood, an order-free bag, the blend, and the trainer's trim."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from xdrec.errors import XdrecError
from xdrec.evaluation import per_user_metrics
from xdrec.strategies.bag import (
    WEIGHTS,
    BagModel,
    BagOptions,
    BagScorer,
    choose_blend,
    multinomial_loss,
    tokens_for,
)
from xdrec.training import Examples, TrainConfig, train

N_SOURCE, N_TARGET = 7, 9


def model(target_input: bool = True, seed: int = 0) -> BagModel:
    torch.manual_seed(seed)
    m = BagModel(N_SOURCE, N_TARGET, BagOptions(dim=8, target_input=target_input), torch.arange(N_TARGET + 1))
    return m.eval()


def test_multinomial_loss_is_the_mean_per_user_likelihood() -> None:
    torch.manual_seed(0)
    hidden, table = torch.randn(3, 1, 5), torch.randn(N_TARGET + 1, 5)
    labels = torch.tensor([[0, 0, 4], [1, 2, 3], [0, 0, 0]])  # the third user has nothing to predict
    expected = []
    for row in range(2):
        logits = [float(hidden[row, 0] @ table[i]) for i in range(1, N_TARGET + 1)]  # column 0 excluded
        log_z = math.log(sum(math.exp(v) for v in logits))
        items = [int(i) for i in labels[row] if i]
        expected.append(-sum(logits[i - 1] - log_z for i in items) / len(items))
    got = multinomial_loss(1)(hidden, labels, table)
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_members_are_independent_models_side_by_side() -> None:
    """Two members score as two one-member models with their weights; the loss is their mean."""
    torch.manual_seed(0)
    config = BagOptions(dim=8, members=2)
    pair = BagModel(N_SOURCE, N_TARGET, config, torch.arange(N_TARGET + 1)).eval()
    with torch.no_grad():
        pair.bias.add_(torch.randn_like(pair.bias))  # the members' biases differ too
    singles = []
    for k in range(2):
        one = model()
        with torch.no_grad():
            one.inputs.weight.copy_(pair.inputs.weight[:, k * 8 : (k + 1) * 8])
            one.table.copy_(pair.table[:, k * 8 : (k + 1) * 8])
            one.bias.copy_(pair.bias.view(-1, 2)[:, k])
        singles.append(one)
    tokens = torch.tensor([[0, 2, 5, N_SOURCE + 3], [0, 0, 0, 1]])
    expected = (singles[0].log_probs(tokens) + singles[1].log_probs(tokens)) / 2
    assert torch.allclose(pair.log_probs(tokens), expected, atol=1e-5)
    labels = torch.tensor([[0, 4, 7], [0, 0, 2]])
    losses = [multinomial_loss(1)(m(tokens), labels, m.item_embeddings()) for m in singles]
    got = multinomial_loss(2)(pair(tokens), labels, pair.item_embeddings())
    assert got.item() == pytest.approx((losses[0].item() + losses[1].item()) / 2, rel=1e-5)


def test_a_bad_bag_config_is_an_error() -> None:
    with pytest.raises(XdrecError, match="members"):
        BagOptions(members=0)
    with pytest.raises(XdrecError, match="dropout"):
        BagOptions(dropout=1.0)


def test_the_bag_ignores_order_padding_and_repeated_padding() -> None:
    m = model()
    a = torch.tensor([[0, 0, 3, 5, N_SOURCE + 2]])
    b = torch.tensor([[N_SOURCE + 2, 5, 0, 3]])  # same items, other order, padding in between
    assert torch.allclose(m.log_probs(a), m.log_probs(b), atol=1e-6)
    assert m.log_probs(a)[0, 0] == -torch.inf and torch.isfinite(m.log_probs(a)[0, 1:]).all()
    empty = m.log_probs(torch.zeros(1, 4, dtype=torch.long))  # no items: the bias alone (popularity)
    assert torch.allclose(empty[0, 1:], F.log_softmax(m.bias[1:], 0), atol=1e-6)


def test_target_history_enters_only_when_configured() -> None:
    source, history = torch.tensor([[0, 2, 4]]), torch.tensor([[0, 1, 9]])
    tokens = tokens_for(model(True), source, history)
    assert sorted(int(t) for t in tokens[0] if t) == [2, 4, 8, 16]
    repeated = tokens_for(model(True), source, torch.tensor([[1, 9, 1]]))  # a repeat purchase counts once
    assert sorted(int(t) for t in repeated[0] if t) == [2, 4, 8, 16]
    assert torch.equal(tokens_for(model(False), source, history), source)


class _Fixed:
    """A target model whose scores are given."""

    def __init__(self, scores: torch.Tensor) -> None:
        self.given, self.name = scores, "fixed"

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.given[user_ids]


def test_cold_users_get_the_bag_and_warm_users_the_blend() -> None:
    m = model()
    source = torch.tensor([[0, 1, 2], [3, 4, 5]])
    target = torch.randn(2, N_TARGET + 1)
    history = torch.tensor([[0, 0], [6, 7]])  # user 0 is cold, user 1 warm with 2 target items
    scorer = BagScorer(m, source, target=_Fixed(target), weight=0.7, decay=1.0)  # type: ignore[arg-type]
    got = scorer.scores(torch.tensor([0, 1]), history)
    bag_cold = m.log_probs(source[:1])
    bag_warm = m.log_probs(torch.cat([source[1:], history[1:] + N_SOURCE], 1))
    assert torch.allclose(got[0], bag_cold[0])
    assert torch.allclose(got[1], F.log_softmax(target[1], 0) + 0.7 / 2 * bag_warm[0], atol=1e-6)


def test_the_chosen_blend_is_the_best_one_tried_and_scores_as_tried() -> None:
    torch.manual_seed(1)
    n_users = 40
    source = torch.randint(0, N_SOURCE + 1, (n_users, 3))
    target = torch.randn(n_users, N_TARGET + 1)
    cases = pl.DataFrame(
        {
            "user_id": list(range(n_users)),
            "history": [[1 + u % N_TARGET] * (1 + u % 3) for u in range(n_users)],
            "targets": [[1 + (u * 7) % N_TARGET] for u in range(n_users)],
            "segment": ["warm"] * n_users,
        },
        schema={
            "user_id": pl.Int32,
            "history": pl.List(pl.Int32),
            "targets": pl.List(pl.Int32),
            "segment": pl.String,
        },
    )
    scorer = BagScorer(model(), source, target=_Fixed(target))  # type: ignore[arg-type]
    (weight, decay), tried = choose_blend(scorer, cases, N_TARGET)
    assert len(tried) == 1 + 3 * (len(WEIGHTS) - 1) and "weight=0 decay=0" in tried  # 0: target-only alone
    assert tried[f"weight={weight:g} decay={decay:g}"] == max(tried.values())
    again = BagScorer(model(), source, target=_Fixed(target), weight=weight, decay=decay)  # type: ignore[arg-type]
    assert per_user_metrics(again, cases, N_TARGET)["NDCG@10"].mean() == pytest.approx(max(tried.values()))


def test_the_trainer_keeps_label_columns_wider_than_the_inputs() -> None:
    """A bag's labels (the whole target history) may be longer than its inputs; trimming must keep them."""
    seen: list[int] = []

    def count_labels(hidden: torch.Tensor, labels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        seen.append(int((labels != 0).sum()))
        return multinomial_loss(1)(hidden, labels, table)

    inputs = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 0, 3]])  # one source item
    labels = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])  # nine target items
    train(model(False), Examples(inputs, labels), TrainConfig(epochs=1, device="cpu"), loss_fn=count_labels,
          progress=False)  # fmt: skip
    assert seen == [9]
