"""Transfer strategies: each trains a model that scores target items from a user's source history and
whatever target history they have. One module per strategy, each a `Strategy` (strategies/base.py):

    mapping    EMCDR: MLP from source user vectors to the target model's space   (cold users)
    finetune   target SASRec initialised from the source model's blocks          (warm users)
    fusion     target SASRec with the source vector as a prefix token            (warm and cold)
    joint      one SASRec over the merged source + target timeline               (warm and cold)
    bag        softmax over target items from the source + target item bag,      (warm and cold)
               blended with target-only for warm users

A new strategy is one module with a `Strategy` subclass and one line in `STRATEGIES`; its `Options` (if
any) appear as --<name>-<field> in `transfer` and `run` and in `tune`'s space without another edit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from xdrec.data.dataset import Dataset
from xdrec.embedding import load_user_vectors
from xdrec.errors import XdrecError
from xdrec.options import Spec, declared
from xdrec.sequence_scorer import load_backbone
from xdrec.strategies.bag import Bag
from xdrec.strategies.base import (
    ScoringInputs,
    Segment,
    Strategy,
    TransferConfig,
    TransferContext,
    TransferResult,
    directed,
    fit_strategy,
    model_name,
)
from xdrec.strategies.finetune import Finetune
from xdrec.strategies.fusion import Fusion
from xdrec.strategies.joint import Joint
from xdrec.strategies.mapping import Mapping
from xdrec.tuned_settings import apply_tuned
from xdrec.workspace import Workspace

# The registry, in report order.
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Mapping(), Finetune(), Fusion(), Joint(), Bag())}
# What `run` and `transfer` train unless told otherwise: the strategies that are no worse than target-only
# on warm users and than popularity on the cold users they serve (BENCHMARKS.md). `fusion` falls below
# popularity on cold users on the pairs measured so far.
DEFAULT = ("mapping", "finetune", "bag")


def defaults_for(split: str) -> tuple[str, ...]:
    """The default strategies on a dataset of `split`: DEFAULT, and on the mixed split (the papers' merged
    timeline) `joint` too. On the 5-core `loo` Grocery -> Home_and_Kitchen data validation preferred the
    single-domain SASRecs to it in both domains and its cold-start scores fell below popularity's
    (BENCHMARKS.md), so there it is trained only when named."""
    return (*DEFAULT, "joint") if split == "mixed" else DEFAULT


@dataclass(frozen=True)
class StrategyOption:
    """One declared option of a strategy, as the command line (`flag`, `dest`) and `tune` (`key`) name it."""

    strategy: str
    field: str
    default: Any
    spec: Spec

    @property
    def dest(self) -> str:
        return f"{self.strategy}_{self.field}"

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def key(self) -> str:
        return f"{self.strategy}.{self.field}"


def declared_options() -> list[StrategyOption]:
    """Every registered strategy's own options, in registry then declaration order."""
    return [
        StrategyOption(s.name, f.name, f.default, spec)
        for s in STRATEGIES.values()
        if s.Options is not None
        for f, spec in declared(s.Options)
    ]


def strategy_options(values: dict[str, Any]) -> tuple[Any, ...]:
    """Each strategy's `Options` from the values given by `dest` (--bag-dim: "bag_dim"); a missing value
    keeps its default."""
    given = {o.dest: o for o in declared_options() if o.dest in values}
    return tuple(
        s.Options(**{o.field: values[d] for d, o in given.items() if o.strategy == s.name})
        for s in STRATEGIES.values()
        if s.Options is not None
    )


def parse_strategies(names: Sequence[str], split: str | None = None) -> list[str]:
    """`default`, `all` or strategy names -> the list to run, with a clear error for an unknown one.
    `default` (also no names) is `defaults_for(split)`: DEFAULT when the dataset's split is not known."""
    if "all" in names:
        return list(STRATEGIES)
    if not names or "default" in names:
        defaults = DEFAULT if split is None else defaults_for(split)
        names = [*defaults, *(n for n in names if n != "default")]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise XdrecError(
            f"unknown strategy {unknown[0]!r}: choose from {', '.join(STRATEGIES)}, default or all"
        )
    return list(dict.fromkeys(names))


def transfer(
    workspace: Workspace,
    strategies: Sequence[str] = ("default",),
    *,
    dataset: str | None = None,
    config: TransferConfig = TransferConfig(),
    target: str | None = None,
    resume: bool | None = False,  # None: if an interrupted run was started the same way
    progress: bool = True,
    tuned: bool = False,
    keep: Collection[str] = (),
) -> list[TransferResult]:
    """Train each strategy on the current dataset into models/<strategy>/.

    target: the domain to transfer into (default the dataset's target; the other domain is the source).
    Needs the source model (`xdrec pretrain`), its user vectors (`xdrec embed`) and, for mapping, the
    target-only model (`xdrec pretrain --domain TARGET`). Into the dataset's source domain (the reverse
    direction) the roles swap (`directed`): target-only is the source model, `xdrec embed --model
    target-only` its vectors, source-only mapping's target space, and the models are
    models/<strategy>-reverse/.
    tuned: train each strategy with the settings `xdrec tune` stored for its model name, except the
        fields named in `keep` (the options a user set explicitly); see `xdrec.tuned_settings`.
    """
    parse_strategies(strategies)  # an unknown name fails before the dataset is read
    data = Dataset.from_workspace(workspace, dataset)
    names = parse_strategies(strategies, data.split)
    target = target or data.target
    data.check_domain(target)
    if "mapping" in names and data.manifest.get("overlap_users") == 0:  # its validation would be nan
        raise XdrecError(
            f"mapping learns from users active in both domains, and dataset {data.name} has none: "
            "leave mapping out (--strategy finetune --strategy fusion ...) or prepare other domains"
        )
    results = []
    for name in names:
        own, settings = config, None
        into = data.target if STRATEGIES[name].both_domains else target  # its one model scores both
        if tuned:
            model = model_name(name, data, into)
            (own,), settings = apply_tuned(
                workspace, data, model, (config,), keep, apply=STRATEGIES[name].with_params
            )
        own = directed(own, data, into)
        ctx, inputs = strategy_inputs(workspace, data, STRATEGIES[name], own, into)
        result = fit_strategy(STRATEGIES[name], ctx, own, inputs, progress, resume=resume)
        results.append(replace(result, tuned=settings))
    return results


def strategy_inputs(
    workspace: Workspace,
    data: Dataset,
    strategy: Strategy,
    config: TransferConfig = TransferConfig(),
    target: str | None = None,
) -> tuple[TransferContext, ScoringInputs]:
    """What `strategy.build` needs: the source model with its user vectors (checked to belong together),
    and the target model when the strategy `needs` it (checked to exist). `config` is the one for a
    transfer into `target` (`directed`: into the dataset's source, the single-domain models swap roles)."""
    target = target or data.target
    data.check_domain(target)
    device = config.train.device
    # Built on the weights validation chose (where a single-domain model was refitted on its answers).
    source = load_backbone(workspace, config.source_model, data, device, for_validation=True)
    if not workspace.embeddings(config.source_model).exists():
        raise XdrecError(
            f"no user vectors of {config.source_model}: run `xdrec embed --model {config.source_model}` first"
        )
    vectors = load_user_vectors(workspace, data, config.source_model)
    if vectors.model_fingerprint != source.fingerprint:
        raise XdrecError(
            f"the user vectors in {workspace.embeddings(config.source_model)} come from an earlier "
            f"{config.source_model} model: re-run `xdrec embed` first"
        )
    ctx = TransferContext(workspace=workspace, dataset=data, source=source, vectors=vectors, target=target)
    target_model = None
    if "target_model" in strategy.needs:
        if not workspace.model_dir(config.target_model).exists():
            raise XdrecError(
                f"{strategy.name} needs the target model {config.target_model!r}: "
                f"run `xdrec pretrain --domain {target}` first"
            )
        target_model = load_backbone(workspace, config.target_model, data, device, for_validation=True)
    return ctx, ScoringInputs(data, device, vectors=vectors, target_model=target_model)


__all__ = [
    "DEFAULT",
    "STRATEGIES",
    "Segment",
    "Strategy",
    "StrategyOption",
    "TransferConfig",
    "TransferContext",
    "TransferResult",
    "declared_options",
    "defaults_for",
    "model_name",
    "parse_strategies",
    "strategy_inputs",
    "strategy_options",
    "transfer",
]
