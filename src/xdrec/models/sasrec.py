"""SASRec (Kang & McAuley, 2018): a causal Transformer over a user's item sequence.

Sequences are LEFT-padded with item 0 (the most recent item is in the last column). The hidden state at
position t summarises items 1..t and is scored against the item embedding table (tied input/output
embeddings) to predict item t+1.

It implements the `xdrec.models.Backbone` protocol; the hooks the transfer strategies use:
    extra   (B, L, D)   added to the item + position embeddings: a domain embedding (joint), the
                        projected source vector at the prefix slot (fusion)
    load_blocks(state)  copy the Transformer blocks of another SASRec, any vocabulary     (finetune)
    user_vector(items)  the last position's hidden state                                  (embed)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xdrec.options import Choice, option


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int  # item ids are 1..n_items; 0 is padding
    # The declared options (xdrec.options): the command line's --hidden ... --max-len and tune's space.
    hidden: int = option(64, "Hidden size D.", low=1, tune=Choice((32, 64, 128, 256)))
    blocks: int = option(2, "Transformer blocks.", low=1, tune=Choice((1, 2, 3)))
    # every tuned hidden size is a multiple of every tuned head count
    heads: int = option(2, "Attention heads (must divide D).", low=1, tune=Choice((1, 2, 4)))
    max_len: int = option(50, "Most recent items a model reads.", low=1, tune=Choice((25, 50, 100, 200)))
    dropout: float = option(
        0.2, "Dropout rate.", low=0, high=1, high_open=True, tune=Choice(low=0.0, high=0.6)
    )
    norm_first: bool = True  # pre-LN trains more stably than the paper's post-LN at the same learning rate

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.proj_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, D = x.shape
        # (B, T, 3D) -> three (B, heads, T, D/heads)
        q, k, v = (
            t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in self.qkv(x).split(D, -1)
        )
        # mask (B, 1, T, T), True = may attend. SDPA picks the flash / memory-efficient kernel on CUDA.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj_dropout(self.proj(y))


class FeedForward(nn.Module):
    """The paper's point-wise feed-forward network (a 1x1 convolution is a Linear applied per position)."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.norm1 = nn.LayerNorm(cfg.hidden)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden)
        self.ffn = FeedForward(cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.norm_first:
            x = x + self.attn(self.norm1(x), mask)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + self.ffn(x))


def attention_mask(keep: Tensor) -> Tensor:
    """(B, T) bool, False = padding  ->  (B, 1, T, T) bool, True where query t may attend to key s.

    Causal (s <= t) and never to padding, except that every position may attend to itself: a padding
    query would otherwise have no key at all, and SDPA returns NaN for a fully masked row. Real
    queries never see padding (their diagonal is a real item), so this changes nothing they compute.
    """
    T = keep.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()  # (T, T)
    eye = torch.eye(T, dtype=torch.bool, device=keep.device)  # (T, T)
    return (causal & (keep[:, None, :] | eye))[:, None]  # (B, 1, T, T)


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.blocks))
        # Pre-LN leaves the residual stream un-normalised; post-LN already ends each block with a norm.
        self.final_norm = nn.LayerNorm(cfg.hidden) if cfg.norm_first else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    def forward(self, items: Tensor, extra: Tensor | None = None) -> Tensor:
        """items (B, L) long, left-padded, L <= max_len  ->  hidden states (B, L, D), zero at padding."""
        L = items.shape[1]
        if items.shape[1] > self.cfg.max_len:
            raise ValueError(
                f"sequence length {L} exceeds max_len {self.cfg.max_len}: truncate the input first"
            )
        keep = items != 0  # (B, L)
        # Positions count back from the most recent item, so the last column always has the same
        # embedding and extra left padding changes nothing (the paper's numbering when L == max_len).
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=items.device)  # (L,)
        # sqrt(D) scaling as in the reference implementation: the tied table has small entries.
        x = self.item_emb(items) * math.sqrt(self.cfg.hidden) + self.pos_emb(pos)  # (B, L, D)
        if extra is not None:
            x = x + extra
        x = self.emb_dropout(x) * keep[..., None]
        mask = attention_mask(keep)  # (B, 1, T, T)
        for block in self.blocks:
            x = block(x, mask)
        x = self.final_norm(x)
        return x * keep[..., None]  # padding outputs are zero, never a stray prediction

    def item_embeddings(self) -> Tensor:
        """The output (= input) embedding table (n_items + 1, D); scores are hidden @ table.T."""
        return self.item_emb.weight

    def user_vector(self, items: Tensor) -> Tensor:
        """The hidden state after a user's most recent item: (B, L) -> (B, D); zero for an empty history."""
        return self(items[:, -self.cfg.max_len :])[:, -1]

    def load_blocks(self, state: dict[str, Tensor]) -> list[str]:
        """Initialise the Transformer blocks (and final norm) from another SASRec's state dict.

        The embeddings stay as they are, so the other model may have another vocabulary (finetune:
        source-domain blocks, target-domain items). Returns the names of the tensors copied.
        """
        names = [n for n in self.state_dict() if n.startswith(("blocks.", "final_norm."))]
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"the state dict lacks {len(missing)} block tensors, e.g. {missing[0]}")
        self.load_state_dict({n: state[n] for n in names}, strict=False)
        return names
