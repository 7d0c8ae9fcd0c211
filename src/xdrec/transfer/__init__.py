"""Transfer strategies: each trains a model that scores target items from a user's source history and
whatever target history they have. One module per strategy, each with `fit(ctx, config, progress)`.

    mapping    EMCDR: MLP from source user vectors to the target model's space   (cold users)
    finetune   target SASRec initialised from the source model's blocks          (warm users)
    fusion     target SASRec with the source vector as a prefix token            (warm and cold)
    joint      one SASRec over the merged source + target timeline               (warm and cold)
"""

from __future__ import annotations

from collections.abc import Sequence

from xdrec.data.dataset import Dataset
from xdrec.embed import load_user_vectors
from xdrec.errors import XdrecError
from xdrec.pretrain import load_sasrec
from xdrec.transfer import finetune, fusion, joint, mapping
from xdrec.transfer.base import TransferConfig, TransferContext, TransferResult
from xdrec.workspace import Workspace

STRATEGIES = {m.NAME: m for m in (mapping, finetune, fusion, joint)}


def parse_strategies(names: Sequence[str]) -> list[str]:
    """`all` or strategy names -> the list to run, with a clear error for an unknown one."""
    if not names or "all" in names:
        return list(STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise XdrecError(f"unknown strategy {unknown[0]!r}: choose from {', '.join(STRATEGIES)} or all")
    return list(dict.fromkeys(names))


def transfer(
    workspace: Workspace,
    strategies: Sequence[str] = ("all",),
    *,
    dataset: str | None = None,
    config: TransferConfig = TransferConfig(),
    progress: bool = True,
) -> list[TransferResult]:
    """Train each strategy on the current dataset into models/<strategy>/.

    Needs the source model (`xdrec pretrain`), its user vectors (`xdrec embed`) and, for mapping, the
    target-only model (`xdrec pretrain --domain TARGET`).
    """
    names = parse_strategies(strategies)
    data = Dataset.from_workspace(workspace, dataset)
    source = load_sasrec(workspace, config.source_model, data, config.train.device)
    vectors = load_user_vectors(workspace, data, config.source_model)
    if vectors.model_fingerprint != source.fingerprint:
        raise XdrecError(
            f"the user vectors in {workspace.embeddings(config.source_model)} come from an earlier "
            f"{config.source_model} model: re-run `xdrec embed` first"
        )
    ctx = TransferContext(workspace=workspace, dataset=data, source=source, vectors=vectors)
    return [STRATEGIES[name].fit(ctx, config, progress) for name in names]


__all__ = ["STRATEGIES", "TransferConfig", "TransferResult", "parse_strategies", "transfer"]
