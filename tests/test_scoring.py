"""pad_left: the one way item sequences become left-padded model inputs."""

from __future__ import annotations

import torch

from xdrec.scoring import pad_left


def test_pad_left_right_aligns_and_pads_to_the_longest() -> None:
    assert torch.equal(pad_left([[1, 2], [3], []]), torch.tensor([[1, 2], [0, 3], [0, 0]]))


def test_pad_left_with_width_is_exactly_that_wide() -> None:
    # Wider than every sequence: still `width` columns (a batch of short histories keeps its shape).
    assert torch.equal(pad_left([[1, 2], [3]], width=4), torch.tensor([[0, 0, 1, 2], [0, 0, 0, 3]]))
    # Narrower: the most recent items are kept.
    assert torch.equal(pad_left([[1, 2, 3, 4, 5]], width=2), torch.tensor([[4, 5]]))


def test_pad_left_of_nothing_is_one_padding_column() -> None:
    assert pad_left([[], []]).shape == (2, 1)
