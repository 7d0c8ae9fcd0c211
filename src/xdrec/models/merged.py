"""A model of the merged two-domain timeline with domain-aware parts (after ABXI, Bian et al. 2025).

Input: one user's interactions in both domains, merged by time, as tokens in one id space: domain A's
items are 1..n_a and domain B's n_a + 1..n_a + n_b (0 is padding). A shared causal Transformer (SASRec's)
reads the merged timeline; each domain then gets its own view of the same position:

    r_d = LN(h_x + adapter_d(h_x))                   the merged state, bent towards domain d (low rank)
        + LN(h_d + proj_d(h_d))                      the state after d's own items only, where there is one

h_x is the merged encoding at the position, h_d the shared encoder's reading of the user's domain-d items
alone, taken at the latest d item at or before that position (so it stays causal). `forward` returns both
views, (B, L, 2, D): the loss scores a label with the view of the label's domain, and a domain's ranking
uses its view at the last position. The output table is the input table (tied), so a domain's items are
only ever ranked against that domain's items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xdrec.models.sasrec import SASRec, SASRecConfig


@dataclass(frozen=True)
class MergedConfig:
    n_a: int  # domain A's items are tokens 1..n_a
    n_b: int  # domain B's items are tokens n_a + 1..n_a + n_b
    hidden: int = 128
    blocks: int = 1
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.3
    rank: int = 8  # of each domain's adapter on the merged state
    domain_views: bool = True  # add each domain's own-items encoding (h_d above)

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.n_a < 1 or self.n_b < 1:
            raise ValueError("both domains need at least one item")

    @property
    def n_items(self) -> int:
        return self.n_a + self.n_b

    def encoder(self) -> SASRecConfig:
        return SASRecConfig(self.n_items, self.hidden, self.blocks, self.heads, self.max_len, self.dropout)


class LowRank(nn.Module):
    """x -> up(down(x)): a rank-r residual branch (LoRA's shape), zero at initialisation."""

    def __init__(self, hidden: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


class DomainHead(nn.Module):
    """One domain's view of a position: the adapted merged state plus, optionally, its own-items state."""

    def __init__(self, cfg: MergedConfig) -> None:
        super().__init__()
        self.adapter = LowRank(cfg.hidden, cfg.rank)
        self.norm_merged = nn.LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.domain_views:
            self.proj = nn.Sequential(
                nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden)
            )
            self.norm_own = nn.LayerNorm(cfg.hidden)

    def forward(self, merged: Tensor, own: Tensor | None, has_own: Tensor | None) -> Tensor:
        out = self.norm_merged(merged + self.dropout(self.adapter(merged)))  # (B, L, D)
        if own is not None and has_own is not None:
            out = out + self.norm_own(own + self.dropout(self.proj(own))) * has_own[..., None]
        return out


def own_items_view(tokens: Tensor, in_domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The domain's items alone, left-padded, and where each merged position finds its latest one.

    tokens (B, L), in_domain (B, L) bool  ->  own (B, L) tokens of the domain only (left-padded, in time
    order), index (B, L) long: the column of `own` holding the latest domain item at or before each
    position, and has (B, L) bool: whether there is one.
    """
    L = tokens.shape[1]
    order = torch.sort(in_domain.int(), dim=1, stable=True).indices  # kept tokens move right, in order
    own = (tokens * in_domain).gather(1, order)  # (B, L)
    seen = in_domain.long().cumsum(1)  # (B, L): domain items at or before each position
    total = seen[:, -1:]  # (B, 1)
    index = (L - total + seen - 1).clamp(min=0)  # the seen-th of them sits at column L - total + seen - 1
    return own, index, seen > 0


class MergedTimeline(nn.Module):
    def __init__(self, cfg: MergedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SASRec(cfg.encoder())
        self.domain_emb = nn.Embedding(3, cfg.hidden, padding_idx=0)  # 0 padding, 1 domain A, 2 domain B
        nn.init.normal_(self.domain_emb.weight, std=0.02)
        with torch.no_grad():
            self.domain_emb.weight[0].zero_()
        self.heads = nn.ModuleList(DomainHead(cfg) for _ in range(2))

    def domains(self, tokens: Tensor) -> Tensor:
        """(B, L) tokens -> (B, L) 0 padding, 1 domain A, 2 domain B."""
        return (tokens > 0).long() + (tokens > self.cfg.n_a).long()

    def encode(self, tokens: Tensor) -> Tensor:
        return self.encoder(tokens, extra=self.domain_emb(self.domains(tokens)))  # (B, L, D)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) left-padded merged timelines -> (B, L, 2, D): each position's view for A and B."""
        merged = self.encode(tokens)
        domain = self.domains(tokens)
        views = []
        for d, head in enumerate(self.heads, start=1):
            if self.cfg.domain_views:
                own, index, has = own_items_view(tokens, domain == d)
                own_states = self.encode(own).gather(1, index[..., None].expand_as(merged))  # (B, L, D)
                views.append(head(merged, own_states, has))
            else:
                views.append(head(merged, None, None))
        return torch.stack(views, dim=2)  # (B, L, 2, D)

    def item_embeddings(self) -> Tensor:
        return self.encoder.item_embeddings()  # (n_a + n_b + 1, D)

    def tokens_of(self, domain: int) -> tuple[int, int]:
        """Domain 0 (A) or 1 (B): its first and last token (the domain's item i is token first + i - 1)."""
        return (1, self.cfg.n_a) if domain == 0 else (self.cfg.n_a + 1, self.cfg.n_items)

    def domain_table(self, domain: int) -> Tensor:
        """Domain 0 (A) or 1 (B): its rows of the table, padding row first: (n_d + 1, D)."""
        table = self.item_embeddings()
        first, last = self.tokens_of(domain)
        return torch.cat([table[:1], table[first : last + 1]])

    def user_vectors(self, tokens: Tensor, domain: int) -> Tensor:
        """(B, L) merged timelines -> (B, D): the view for `domain` after each user's latest interaction."""
        return self(tokens[:, -self.cfg.max_len :])[:, -1, domain]
