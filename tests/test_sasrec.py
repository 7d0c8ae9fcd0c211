"""SASRec: causality, padding invariance, the extra hook, block transfer, and overfitting."""

from __future__ import annotations

import pytest
import torch

from xdrec.models.sasrec import SASRec, SASRecConfig
from xdrec.training import Examples, TrainConfig, train

D = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest, and much faster on a busy shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def model(norm_first: bool = True, n_items: int = 30, max_len: int = 8, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(
        SASRecConfig(n_items, hidden=D, blocks=2, heads=2, max_len=max_len, norm_first=norm_first)
    ).eval()


def items(*rows: list[int], width: int = 8) -> torch.Tensor:
    return torch.tensor([[0] * (width - len(r)) + r for r in rows])


@pytest.mark.parametrize("norm_first", [True, False])
def test_a_later_item_never_changes_an_earlier_output(norm_first: bool) -> None:
    m = model(norm_first)
    x = items([3, 7, 1, 9, 4, 2], [5, 6])
    base = m(x)
    for t in range(8):
        changed = x.clone()
        changed[:, t] = torch.where(changed[:, t] > 0, 11, 0)  # a different item where there is one
        out = m(changed)
        assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6), f"position {t} leaked backwards"
        if (x[:, t] > 0).any():
            assert not torch.allclose(out[:, t:], base[:, t:])


@pytest.mark.parametrize("norm_first", [True, False])
def test_more_left_padding_changes_nothing(norm_first: bool) -> None:
    m = model(norm_first)
    seq = [4, 8, 15, 16, 23]
    short, long = m(items(seq, width=5)), m(items(seq, width=8))
    assert torch.allclose(short, long[:, 3:], atol=1e-6)
    assert torch.equal(long[:, :3], torch.zeros(1, 3, D))  # padding outputs are zero
    assert torch.allclose(m.user_vector(items(seq, width=5)), m.user_vector(items(seq, width=8)), atol=1e-6)


def test_empty_history_gives_a_finite_zero_vector() -> None:
    m = model()
    x = torch.zeros(2, 8, dtype=torch.long)
    x[1, -1] = 5
    out = m.user_vector(x)
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(D)) and out[1].abs().sum() > 0


def test_user_vector_keeps_the_most_recent_max_len_items() -> None:
    m = model(max_len=4)
    long = torch.tensor([[9, 9, 1, 2, 3, 4]])
    assert torch.allclose(m.user_vector(long), m(long[:, -4:])[:, -1])
    with pytest.raises(ValueError, match="max_len"):
        m(long)


def test_extra_embedding_is_added_per_position_and_keeps_causality() -> None:
    m = model()
    x = items([3, 7, 1, 9, 4])
    extra = torch.randn(1, 8, D)
    a = m(x, extra=extra)
    assert a.shape == (1, 8, D) and not torch.allclose(a, m(x))
    later = extra.clone()
    later[0, -1] += torch.randn(D)  # only the last position's extra input changes
    b = m(x, extra=later)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6) and not torch.allclose(a[:, -1], b[:, -1])


def test_load_blocks_copies_the_transformer_but_not_the_vocabulary() -> None:
    source, target = model(n_items=30, seed=1), model(n_items=12, seed=2)
    embeddings = target.item_emb.weight.clone()
    copied = target.load_blocks(source.state_dict())
    assert copied and all(n.startswith(("blocks.", "final_norm.")) for n in copied)
    for n in copied:
        assert torch.equal(target.state_dict()[n], source.state_dict()[n])
    assert torch.equal(target.item_emb.weight, embeddings)
    with pytest.raises(ValueError, match="lacks"):
        target.load_blocks({})


def test_scores_are_tied_to_the_item_table() -> None:
    m = model()
    assert m.item_embeddings().shape == (31, D) and m.item_embeddings() is m.item_emb.weight


def test_overfits_a_tiny_dataset() -> None:
    """Four fixed sequences, every position labelled: the model must memorise every next item."""
    torch.manual_seed(0)
    seqs = torch.tensor(
        [
            [1, 2, 3, 4, 5, 6, 7],
            [8, 9, 10, 11, 12, 13, 14],
            [15, 3, 9, 1, 20, 2, 5],
            [7, 7, 16, 17, 18, 19, 4],
        ]
    )
    inputs, labels = seqs[:, :-1], seqs[:, 1:]
    m = SASRec(SASRecConfig(20, hidden=32, blocks=2, heads=2, max_len=6, dropout=0.0))
    result = train(
        m,
        Examples(inputs, labels),
        TrainConfig(epochs=300, batch_size=4, lr=5e-3, loss="ce", device="cpu", threads=1),
        progress=False,
    )
    assert result.history[-1]["loss"] < 0.05
    with torch.no_grad():
        predicted = (m(inputs) @ m.item_embeddings().T)[..., 1:].argmax(-1) + 1  # (4, 6)
    assert torch.equal(predicted, labels)
