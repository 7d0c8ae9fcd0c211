"""The one contract of a transfer strategy, and the `fit` that trains any of them.

A strategy says what it is (`name`), which user segments it serves from real evidence (`serves`), which
trained inputs it is built from besides the source model (`needs`), what to train (`build` -> a `Plan`)
and how to score with what it saved (`load`). Everything else reads this contract: `fit` (seed -> build ->
train -> save, with the lineage every strategy records), `xdrec.store` (loading, lineage checks), and
`xdrec.pipeline` (`run`'s reuse check, the model chosen for a user's segment).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from xdrec.checkpoint import BUILT_FROM, Checkpoint, dataset_identity
from xdrec.data.dataset import Dataset
from xdrec.embedding import UserVectors
from xdrec.fit import Plan, fit, refit_note
from xdrec.model_options import ModelOptions
from xdrec.models import BackboneConfig
from xdrec.scoring import Scorer
from xdrec.sequence_scorer import SequenceScorer
from xdrec.training import TrainConfig, TrainResult
from xdrec.tuned_settings import Param, Tuned, with_params
from xdrec.workspace import Workspace

# The user segments of a report that a model can serve (see xdrec.evaluation).
Segment = Literal["warm", "cold", "target-only"]
# Trained inputs a strategy may need besides the source model, at training and at scoring time.
Need = Literal["source_vectors", "target_model"]
Opts = TypeVar("Opts")
# The shared settings `xdrec tune` can search for a strategy: the training's and the architecture's
# (over the source model's; see xdrec.tuning).
TRAINING = ("lr", "weight_decay", "batch_size")
ARCHITECTURE = ("hidden", "blocks", "heads", "dropout", "max_len")


@dataclass(frozen=True)
class TransferConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelOptions = field(default_factory=ModelOptions)  # over the source model's architecture
    # The strategies' own options, one object of each strategy's `Options` at most; a strategy whose
    # options are not here gets their defaults (`options`).
    strategy_options: tuple[Any, ...] = ()
    source_model: str = "source-only"
    target_model: str = "target-only"

    def options(self, cls: type[Opts]) -> Opts:
        """The options of class `cls` (a strategy's `Options`) this config holds, else their defaults."""
        return next((o for o in self.strategy_options if type(o) is cls), None) or cls()

    def with_options(self, options: Any) -> TransferConfig:
        """This config with `options` in place of the strategy options of the same class."""
        others = tuple(o for o in self.strategy_options if type(o) is not type(options))
        return replace(self, strategy_options=(*others, options))

    def architecture(self, ctx: TransferContext, n_items: int) -> BackboneConfig:
        """The source model's architecture with the user's model options, for `n_items` items."""
        return replace(self.model.apply(ctx.source.model.cfg), n_items=n_items)  # type: ignore[return-value]


REVERSE = "-reverse"  # the suffix of a strategy's model trained into the dataset's source domain
# The single-domain models by role; in the reverse direction they swap places.
_SWAPPED = {"source-only": "target-only", "target-only": "source-only"}


def model_name(strategy: str, dataset: Dataset, target: str) -> str:
    """Where a strategy trained into `target` lives: models/<strategy>/ for the dataset's target, and
    models/<strategy>-reverse/ for its source (the reverse direction, on the same prepared dataset)."""
    return strategy if target == dataset.target else f"{strategy}{REVERSE}"


def directed(config: TransferConfig, dataset: Dataset, target: str) -> TransferConfig:
    """`config` for a transfer into `target`: into the dataset's source, the single-domain models swap
    roles (the target-only model is the source model, its vectors the user vectors; mapping's target space
    is the source-only model's)."""
    if target == dataset.target:
        return config
    return replace(
        config,
        source_model=_SWAPPED.get(config.source_model, config.source_model),
        target_model=_SWAPPED.get(config.target_model, config.target_model),
    )


@dataclass(frozen=True)
class TransferContext:
    """The trained pieces a strategy builds on, and the direction of the transfer."""

    workspace: Workspace
    dataset: Dataset
    source: SequenceScorer  # the pretrained source-domain model (frozen)
    vectors: UserVectors  # its user vectors, from `xdrec embed`
    target: str  # the domain the strategy scores; the other one of the dataset is the source

    @property
    def source_domain(self) -> str:
        return self.dataset.other(self.target)


@dataclass(frozen=True)
class ScoringInputs:
    """What `Strategy.load` gets: the dataset, the device, and the inputs the strategy `needs`."""

    dataset: Dataset
    device: str
    vectors: UserVectors | None = None  # with "source_vectors"
    # with "target_model": the single-domain model of the domain scored (target-only into the target),
    # with the weights the strategy was built on: those validation chose, where that model was refitted
    target_model: SequenceScorer | None = None
    domain: str | None = None  # the domain to score, for a strategy that scores both (None: its own)
    # The same model as it is served (refitted), where that differs from target_model: what users with
    # history in the domain are blended with or fall back to. Scores mix at the score level, so a model
    # refitted after the strategy was built still fits there.
    served_target: SequenceScorer | None = None

    @property
    def partner(self) -> SequenceScorer | None:
        """The single-domain model users with history are blended with or fall back to: as it is served."""
        return self.served_target if self.served_target is not None else self.target_model


@dataclass(frozen=True)
class TransferResult:
    strategy: str
    model_dir: Path
    training: TrainResult
    serves: frozenset[Segment]  # the segments the strategy scores from real evidence
    tuned: Tuned | None = None  # the stored `xdrec tune` settings it was trained with, if any
    # True when validation preferred the target model it competes with: warm users get that model's scores
    falls_back: bool = False
    # domain -> the weight of its own scores in its blend with the domain's single-domain model (`joint`)
    blend_weights: dict[str, float] = field(default_factory=dict)

    # what config.json records of its refit with the validation items as labels (fit.Plan.refit), if any
    refit: dict[str, Any] | None = None

    def notes(self) -> list[str]:
        """Lines on what validation chose beyond the epochs: the blend, and the refit."""
        lines = []
        mixed = {d: w for d, w in self.blend_weights.items() if 0 < w < 1}
        if mixed:
            weights = ", ".join(f"{d} {w:g}" for d, w in mixed.items())
            lines.append(
                f"users with history get its scores blended with the single-domain model's, at {weights}"
            )
        if self.refit is not None:
            lines.append(refit_note(self.refit))
        return lines


class Strategy(ABC):
    """One transfer strategy. Subclass, set the class attributes, implement `build` and `load`."""

    name: ClassVar[str]
    serves: ClassVar[frozenset[Segment]]
    needs: ClassVar[frozenset[Need]] = frozenset()
    kind: ClassVar[str | None] = None  # the checkpoint's kind when it loads as something else (a backbone)
    # Its own options: a frozen dataclass of `xdrec.options.option` fields, or None. The command line
    # offers each as --<name>-<field> (transfer and run), `xdrec tune` searches those declared with a
    # space as "<name>.<field>", and config.json records them (`record`).
    Options: ClassVar[type | None] = None
    # The shared settings (TRAINING, ARCHITECTURE) `xdrec tune` searches for it, besides its own options.
    tunes: ClassVar[tuple[str, ...]] = TRAINING
    # True: one model scores both domains of the dataset (config.json's `domains`); it is trained once,
    # into the dataset's target, and has no `-reverse` model.
    both_domains: ClassVar[bool] = False

    @abstractmethod
    def build(self, ctx: TransferContext, config: TransferConfig, inputs: ScoringInputs) -> Plan:
        """What to train. Called right after seeding: construct the model before anything else random."""

    @abstractmethod
    def load(self, checkpoint: Checkpoint, inputs: ScoringInputs) -> Scorer:
        """The trained strategy from its checkpoint, as a Scorer of its domain."""

    def own(self, config: TransferConfig) -> Any:
        """Its own options in `config` (None when it declares none)."""
        return None if self.Options is None else config.options(self.Options)

    def record(self, config: TransferConfig) -> dict[str, Any]:
        """Its own options as config.json records them (`run` retrains on a change): {name: options}."""
        own = self.own(config)
        return {} if own is None else {self.name: asdict(own)}

    def with_params(
        self, config: TransferConfig, params: Mapping[str, Param], keep: Collection[str] = ()
    ) -> TransferConfig:
        """`config` with tuned `params` applied, except the options named in `keep` (given by the user):
        the shared settings by their names, its own options by "<name>.<field>" (kept by the option
        <name>_<field>, so --bag-dropout keeps bag.dropout and --dropout the model's)."""
        shared = with_params(config, {k: v for k, v in params.items() if "." not in k}, keep)
        own = self.own(config)
        if own is None:
            return shared
        prefix, dest = f"{self.name}.", f"{self.name}_"
        mine = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
        kept = {k.removeprefix(dest) for k in keep if k.startswith(dest)}
        return shared.with_options(with_params(own, mine, kept))

    def train_config(self, config: TransferConfig) -> TrainConfig:
        """How to train it: the configured training, unless the strategy adjusts it (bag: weight decay)."""
        return config.train


def fit_strategy(
    strategy: Strategy,
    ctx: TransferContext,
    config: TransferConfig,
    inputs: ScoringInputs,
    progress: bool = True,
    *,
    resume: bool | None = False,  # None: if an interrupted run was started the same way
) -> TransferResult:
    """seed -> build -> train -> save models/<name>/ (`model_name`) with what every strategy records.

    `built_from` records the fingerprints of the models it was trained from (the source model, whose
    weights or vectors fed every strategy, and the target model when it `needs` one), so a later
    retraining of any of them marks this strategy stale.
    """
    built_from = {config.source_model: ctx.source.fingerprint}
    name = model_name(strategy.name, ctx.dataset, ctx.target)
    record: dict[str, Any] = {
        "kind": strategy.kind or strategy.name,
        "name": name,
        "strategy": strategy.name,
        "domain": ctx.target,
        "role": ctx.dataset.role(ctx.target),
        "dataset": dataset_identity(ctx.dataset),
        **strategy.record(config),
    }
    if "source_vectors" in strategy.needs:
        record["embeddings"] = config.source_model
    if "target_model" in strategy.needs and inputs.target_model is not None:
        record["target_model"] = config.target_model
        built_from[config.target_model] = inputs.target_model.fingerprint
    record[BUILT_FROM] = built_from
    out = ctx.workspace.model_dir(name)
    fitted = fit(
        lambda: strategy.build(ctx, config, inputs),
        strategy.train_config(config),
        out,
        record,
        resume=resume,
        progress=progress,
    )
    recorded = fitted.checkpoint.config
    return TransferResult(
        name,
        out,
        fitted.training,
        strategy.serves,
        falls_back=bool(recorded.get("falls_back", False)),
        blend_weights=dict(recorded.get("blend_weights", {})),
        refit=recorded.get("refit"),
    )
