"""Each loss against a brute-force reference on small tensors; negatives; the auto choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xdrec.models.losses import (
    CE_MAX_ITEMS,
    CE_MEMORY_BUDGET,
    bce_loss,
    ce_loss,
    choose_loss,
    make_loss,
    popularity_negatives,
    sampled_softmax_loss,
    sampling_log_q,
    two_domain_sampled_loss,
    uniform_negatives,
)

B, L, D, N_ITEMS = 3, 5, 4, 9


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    table = torch.randn(N_ITEMS + 1, D, generator=g, dtype=torch.float64)
    labels = torch.randint(1, N_ITEMS + 1, (B, L), generator=g)
    labels[0, :2] = 0  # left padding: no loss there
    labels[2, 0] = 0
    return hidden, labels, table


def labelled(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    return [(b, t, int(labels[b, t])) for b in range(B) for t in range(L) if labels[b, t] != 0]


def test_ce_matches_brute_force(batch) -> None:
    hidden, labels, table = batch
    terms = []
    for b, t, y in labelled(labels):
        s = [float(hidden[b, t] @ table[i]) for i in range(1, N_ITEMS + 1)]  # items only, never padding
        terms.append(-s[y - 1] + math.log(sum(math.exp(v) for v in s)))
    assert ce_loss(hidden, labels, table).item() == pytest.approx(np.mean(terms), rel=1e-9)


def _two_domain_reference(views, labels, table, boundary: int, draws: tuple[int, int], seed: int) -> float:
    """The loss row by row, with the batch's draws of each domain replayed from the same generator."""
    replay = torch.Generator().manual_seed(seed)
    drawn = [torch.randint(1, boundary + 1, (draws[0],), generator=replay).tolist()]
    drawn.append(torch.randint(boundary + 1, N_ITEMS + 1, (draws[1],), generator=replay).tolist())
    terms = []
    for b, t, y in labelled(labels):
        d = int(y > boundary)
        h = views[b, t, d]
        scores = [float(h @ table[y])] + [float(h @ table[n]) for n in drawn[d] if n != y]
        terms.append(-scores[0] + math.log(sum(math.exp(v) for v in scores)))
    return float(np.mean(terms))


def test_two_domain_sampled_matches_brute_force(batch) -> None:
    """Two domains in one table (ids 1..4 and 5..9): each label in its own domain's view, against the
    batch's draws of that domain, its own id masked among them."""
    hidden, labels, table = batch
    views = torch.stack([hidden, -2 * hidden], dim=2)  # (B, L, 2, D): two different views
    loss = two_domain_sampled_loss(4, N_ITEMS, 3, torch.Generator().manual_seed(5))
    expected = _two_domain_reference(views, labels, table, 4, (3, 3), seed=5)
    assert loss(views, labels, table).item() == pytest.approx(expected, rel=1e-9)


def test_two_domain_sampled_draws_no_more_than_a_domain_has(batch) -> None:
    hidden, labels, table = batch
    views = torch.stack([hidden, -2 * hidden], dim=2)
    loss = two_domain_sampled_loss(4, N_ITEMS, 10_000, torch.Generator().manual_seed(5))
    expected = _two_domain_reference(views, labels, table, 4, (4, 5), seed=5)  # 4 and 5 items
    assert loss(views, labels, table).item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="boundary"):
        two_domain_sampled_loss(N_ITEMS, N_ITEMS, 8, torch.Generator())


def test_padding_positions_carry_no_loss(batch) -> None:
    hidden, labels, table = batch
    changed = hidden.clone()
    changed[labels == 0] = 1e3  # anything at padding positions must not matter
    assert ce_loss(changed, labels, table).item() == ce_loss(hidden, labels, table).item()


def test_bce_matches_brute_force(batch) -> None:
    hidden, labels, table = batch
    state = torch.Generator().manual_seed(7).get_state()
    got = bce_loss(hidden, labels, table, torch.Generator().set_state(state)).item()
    y = torch.tensor([y for _, _, y in labelled(labels)])
    neg = uniform_negatives(y, N_ITEMS, torch.Generator().set_state(state))
    terms = []
    for (b, t, yi), ni in zip(labelled(labels), neg.tolist(), strict=True):
        pos, negative = float(hidden[b, t] @ table[yi]), float(hidden[b, t] @ table[ni])
        terms.append(-math.log(1 / (1 + math.exp(-pos))) - math.log(1 - 1 / (1 + math.exp(-negative))))
    assert got == pytest.approx(np.mean(terms), rel=1e-9)


def test_uniform_negatives_never_the_positive_and_cover_the_rest() -> None:
    y = torch.full((20_000,), 4)
    neg = uniform_negatives(y, N_ITEMS, torch.Generator().manual_seed(1))
    counts = torch.bincount(neg, minlength=N_ITEMS + 1)
    assert counts[0] == 0 and counts[4] == 0
    others = counts[[i for i in range(1, N_ITEMS + 1) if i != 4]].double()
    assert (others / others.sum() - 1 / (N_ITEMS - 1)).abs().max() < 0.01  # uniform over the other 8


def test_sampled_softmax_matches_brute_force_with_logq(batch) -> None:
    hidden, labels, table = batch
    counts = np.array([0, 50, 1, 3, 0, 10, 7, 2, 30, 5])
    log_q = sampling_log_q(counts, N_ITEMS)
    q = (counts + 1) / (counts[1:] + 1).sum()  # popularity + 1, padding excluded
    assert torch.allclose(log_q[1:].exp().double(), torch.from_numpy(q[1:]), atol=1e-6)
    n = 6
    state = torch.Generator().manual_seed(3).get_state()
    got = sampled_softmax_loss(hidden, labels, table, log_q, n, torch.Generator().set_state(state)).item()
    neg = popularity_negatives(log_q, n, torch.Generator().set_state(state)).tolist()
    terms = []
    for b, t, y in labelled(labels):
        # Each candidate's logit minus log(expected count among the n draws) = log(n q_i).
        corrected = (hidden[b, t] @ table.T - (log_q.double() + math.log(n))).tolist()
        candidates = [corrected[y]] + [corrected[j] for j in neg]
        terms.append(-candidates[0] + math.log(sum(math.exp(v) for v in candidates)))
    assert got == pytest.approx(np.mean(terms), rel=1e-5)


def test_in_batch_negatives_match_brute_force_with_logq(batch) -> None:
    """Mixed negatives: the other labelled positions' items and the shared draws, all logQ-corrected by
    their expected count among the (M - 1) + n draws; a position's own label is only its positive."""
    hidden, labels, table = batch
    counts = np.array([0, 50, 1, 3, 0, 10, 7, 2, 30, 5])
    log_q = sampling_log_q(counts, N_ITEMS)
    n = 6
    state = torch.Generator().manual_seed(3).get_state()
    g = torch.Generator().set_state(state)
    got = sampled_softmax_loss(hidden, labels, table, log_q, n, g, in_batch=True).item()
    neg = popularity_negatives(log_q, n, torch.Generator().set_state(state)).tolist()
    positions = labelled(labels)
    draws = len(positions) - 1 + n
    terms = []
    for i, (b, t, y) in enumerate(positions):
        corrected = (hidden[b, t] @ table.T - (log_q.double() + math.log(draws))).tolist()
        others = [corrected[other] for j, (_, _, other) in enumerate(positions) if j != i]
        candidates = [corrected[y], *others, *(corrected[j] for j in neg)]
        terms.append(-candidates[0] + math.log(sum(math.exp(v) for v in candidates)))
    assert got == pytest.approx(np.mean(terms), rel=1e-5)


def test_logq_correction_makes_sampled_softmax_estimate_full_softmax(batch) -> None:
    """With many draws, sampled softmax's gradient approaches full softmax's; without logQ it does not."""
    hidden, labels, table = batch
    counts = np.array([0, 500, 1, 3, 0, 100, 7, 2, 300, 5])  # very skewed: a biased estimate shows
    log_q = sampling_log_q(counts, N_ITEMS).double()

    def grad(loss_fn) -> torch.Tensor:
        h = hidden.clone().requires_grad_()
        loss_fn(h).backward()
        return h.grad

    full = grad(lambda h: ce_loss(h, labels, table))
    g = torch.Generator().manual_seed(0)
    sampled = grad(lambda h: sampled_softmax_loss(h, labels, table, log_q, 200_000, g))
    g = torch.Generator().manual_seed(0)

    def uncorrected(h: torch.Tensor) -> torch.Tensor:  # the same draws, plain logits
        neg = popularity_negatives(log_q, 200_000, g)
        y, hs = labels[labels != 0], h[labels != 0]
        logits = torch.cat([(hs * table[y]).sum(-1, keepdim=True), hs @ table[neg].T], 1)
        return torch.nn.functional.cross_entropy(logits, torch.zeros_like(y))

    biased = grad(uncorrected)
    assert (sampled - full).abs().max() < 0.01
    assert (biased - full).abs().max() > 0.05


def test_sampled_loss_is_seeded() -> None:
    hidden, labels, table = torch.randn(2, 3, 4), torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.randn(6, 4)
    log_q = sampling_log_q(None, 5)
    a = sampled_softmax_loss(hidden, labels, table, log_q, 3, torch.Generator().manual_seed(5))
    b = sampled_softmax_loss(hidden, labels, table, log_q, 3, torch.Generator().manual_seed(5))
    assert a.item() == b.item()


def test_auto_choice_by_catalogue_size() -> None:
    small = choose_loss("auto", CE_MAX_ITEMS, 128, 50)
    assert small.name == "ce" and "GiB" in small.reason and small.words == "full softmax"
    larger = choose_loss("auto", CE_MAX_ITEMS + 1, 128, 50)  # fits in memory, but ce would be slower
    assert larger.name == "sampled" and larger.words == "sampled softmax (a full softmax would be slower)"
    assert choose_loss("auto", CE_MAX_ITEMS, 4096, 200).name == "sampled"  # too large a batch for ce
    books = choose_loss("auto", 495_000, 128, 50)  # Amazon Books 5-core
    assert books.name == "sampled" and "over the" in books.reason and "memory" in books.words
    need = 128 * 50 * 495_001 * 8
    assert need > CE_MEMORY_BUDGET
    assert choose_loss("bce", 495_000, 128, 50).name == "bce"
    with pytest.raises(ValueError, match="unknown loss"):
        choose_loss("hinge", 10, 1, 1)


def test_make_loss_closures_agree_with_functions(batch) -> None:
    hidden, labels, table = batch
    assert (
        make_loss("ce", torch.Generator())(hidden, labels, table).item()
        == ce_loss(hidden, labels, table).item()
    )
    sampled = make_loss("sampled", torch.Generator().manual_seed(2), negatives=4, n_items=N_ITEMS)
    expected = sampled_softmax_loss(
        hidden, labels, table, sampling_log_q(None, N_ITEMS), 4, torch.Generator().manual_seed(2)
    )
    assert sampled(hidden, labels, table).item() == pytest.approx(expected.item())
