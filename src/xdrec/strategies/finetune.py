"""`finetune`: a target SASRec whose Transformer blocks start from the source model's weights.

The item embeddings are new (the target has its own items); what carries over is how the source model
learned to read a sequence. Training, validation, refit and checkpoint are exactly the target-only model's,
so it loads as a plain backbone. It needs target history: a cold-start user gets the empty-history output.
When validation does not show it better than the target model, it serves that model's scores
(see fallback.py).
"""

from __future__ import annotations

from dataclasses import asdict

from xdrec.checkpoint import Checkpoint
from xdrec.errors import XdrecError
from xdrec.fit import Plan
from xdrec.models import backbone_kind, build_backbone
from xdrec.scoring import Scorer
from xdrec.sequence_scorer import SequenceScorer, backbone_from_checkpoint
from xdrec.sequence_training import ndcg_validator, training_examples
from xdrec.strategies.base import TRAINING, ScoringInputs, Strategy, TransferConfig, TransferContext
from xdrec.strategies.fallback import compare_with_target, with_fallback


class Finetune(Strategy):
    name = "finetune"
    serves = frozenset({"warm", "target-only"})  # cold users have no target history
    needs = frozenset({"target_model"})  # what it is compared with, and falls back to
    tunes = (*TRAINING, "dropout", "max_len")  # it copies the source blocks: their shape is fixed
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
        return Plan(
            model,  # type: ignore[arg-type]
            training_examples(data.train_sequences(target), cfg.max_len),
            ndcg_validator(data, target, self.name),
            item_counts=data.item_counts(target),
            finish=compare_with_target(
                data,
                target,
                target_model,
                lambda m: SequenceScorer(m, self.name, target),  # type: ignore[arg-type]
            ),
            # refitted as target-only is (`--refit`): the model it is compared with when served
            refit=training_examples(data.history_sequences(target, "test"), cfg.max_len),
            record={
                "kind": backbone_kind(cfg),
                "n_items": cfg.n_items,
                "model": asdict(cfg),  # type: ignore[call-overload]
                "initialised_from": config.source_model,
            },
        )

    def load(self, checkpoint: Checkpoint, inputs: ScoringInputs) -> Scorer:
        return with_fallback(backbone_from_checkpoint(checkpoint, inputs.device), checkpoint, inputs.partner)
