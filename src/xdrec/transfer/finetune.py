"""`finetune`: a target SASRec whose Transformer blocks start from the source model's weights.

The item embeddings are new (the target has its own items); what carries over is how the source model
learned to read a sequence. Training, validation and checkpoint are exactly the target-only SASRec's, so it
loads as a plain SASRec. It needs target history: a cold-start user gets the empty-history output.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import torch

from xdrec.models.sasrec import SASRec
from xdrec.pretrain import KIND, METRIC, ndcg_validator, training_examples
from xdrec.training import train
from xdrec.transfer.base import TransferConfig, TransferContext, TransferResult, save_strategy

NAME = "finetune"


def fit(ctx: TransferContext, config: TransferConfig, progress: bool = True) -> TransferResult:
    data, target = ctx.dataset, ctx.target
    cfg = replace(ctx.source.model.cfg, n_items=data.n_items(target))
    torch.manual_seed(config.train.seed)
    model = SASRec(cfg)
    model.load_blocks(ctx.source.model.state_dict())
    out = ctx.out_dir(NAME)
    result = train(
        model,
        training_examples(data.train_sequences(target), cfg.max_len),
        config.train,
        validate=ndcg_validator(data, target, NAME),
        metric_name=METRIC,
        out_dir=out,
        item_counts=data.item_counts(target),
        progress=progress,
    )
    save_strategy(
        ctx,
        NAME,
        model.state_dict(),
        config,
        result,
        kind=KIND,
        n_items=cfg.n_items,
        model=asdict(cfg),
        initialised_from=config.source_model,
    )
    return TransferResult(NAME, out, result, serves="warm, target-only (cold users have no target history)")
