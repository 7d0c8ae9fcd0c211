"""`finetune`: a target SASRec whose Transformer blocks start from the source model's weights.

The item embeddings are new (the target has its own items); what carries over is how the source model
learned to read a sequence. Training, validation and checkpoint are exactly the target-only model's, so it
loads as a plain backbone. It needs target history: a cold-start user gets the empty-history output.

A start from the source's blocks can also hurt (on Grocery -> Home_and_Kitchen with tuned settings it
did: validation 0.0254 against target-only's 0.0272, and a significant loss on test). So after training
the fine-tuned model is compared with the target model on the same validation users, and when it is not
better it serves the target model's scores (`falls_back` in its config.json): a default strategy never
serves warm users a model that validation says is worse than the one it competes with.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from xdrec.backbone import SequenceScorer, backbone_from_checkpoint, ndcg_validator, training_examples
from xdrec.checkpoint import Checkpoint
from xdrec.errors import XdrecError
from xdrec.evaluation import per_user_metrics
from xdrec.fit import Plan
from xdrec.models import backbone_kind, build_backbone
from xdrec.scoring import Scorer
from xdrec.strategies.base import ScoringInputs, Strategy, TransferConfig, TransferContext
from xdrec.validation import METRIC, VALIDATION_USERS


class Finetune(Strategy):
    name = "finetune"
    serves = frozenset({"warm", "target-only"})  # cold users have no target history
    needs = frozenset({"target_model"})  # what it is compared with, and falls back to
    kind = "sasrec"

    def build(self, ctx: TransferContext, config: TransferConfig, inputs: ScoringInputs) -> Plan:
        data, target, target_model = ctx.dataset, ctx.target, inputs.target_model
        assert target_model is not None
        cfg = config.architecture(ctx, data.n_items(target))
        source = ctx.source.model.cfg
        changed = [k for k in ("hidden", "blocks", "heads") if getattr(cfg, k) != getattr(source, k)]
        if changed:
            raise XdrecError(
                f"finetune starts from the source model's blocks, so its --{changed[0]} must stay "
                f"{getattr(source, changed[0])}: drop that option or retrain the source model with it"
            )
        model = build_backbone(cfg)
        model.load_blocks(ctx.source.model.state_dict())  # type: ignore[attr-defined]
        cases = data.eval_cases(target, "valid")
        if cases.height > VALIDATION_USERS:  # the users early stopping ranks (validation_metric's sample)
            cases = cases.sample(VALIDATION_USERS, seed=0).sort("user_id")

        def mean_ndcg(scorer: Scorer) -> float:
            return float(per_user_metrics(scorer, cases, cfg.n_items, ks=(10,))[METRIC].mean())

        def compare(trained: torch.nn.Module) -> dict[str, Any]:
            if cases.height == 0:
                return {"falls_back": False}
            own = mean_ndcg(SequenceScorer(trained, self.name))  # type: ignore[arg-type]
            theirs = mean_ndcg(target_model)
            return {"falls_back": own <= theirs, "valid_against_target": {"own": own, "target": theirs}}

        return Plan(
            model,  # type: ignore[arg-type]
            training_examples(data.train_sequences(target), cfg.max_len),
            ndcg_validator(data, target, self.name),
            item_counts=data.item_counts(target),
            finish=compare,
            record={
                "kind": backbone_kind(cfg),
                "n_items": cfg.n_items,
                "model": asdict(cfg),  # type: ignore[call-overload]
                "initialised_from": config.source_model,
            },
        )

    def load(self, checkpoint: Checkpoint, inputs: ScoringInputs) -> Scorer:
        if checkpoint.config.get("falls_back"):
            assert inputs.target_model is not None
            return inputs.target_model
        return backbone_from_checkpoint(checkpoint, inputs.device)
