"""The models folder: what models/ holds, which models a dataset should have, whether each is fresh, stale
or missing and why, the command that (re)builds it, and loading any of them as a `Scorer`.

Every question about models/ is answered here, from each folder's config.json (`checkpoint`):

- listing: `records` (every model folder), `trained_models` (those of a dataset and domain, in report order)
- expected versus missing: `expected_models` (what a default pipeline trains, plus what was trained or
  started for the domain), `untrained` (the expected ones a report lacks, each an `Absent` with its fix)
- freshness and lineage: `model_state` / `model_states` (fresh, stale or missing, and why), `is_current`
  (trained with exactly these settings from inputs not retrained since: `run` reuses it), `check_lineage`
  (loading refuses a model whose inputs were retrained since)
- the fix: `rebuild_command` (from a model's name; `Checkpoint.retrain_command` words it from a record)
- loading: `load_scorer` (by the kind the record names; a strategy with the inputs it `needs`)

A model is stale when it was trained on another prepared dataset (re-prepared since), when its weights
do not belong to its record, or when a model it was built from (`built_from` in its record) was
retrained since: what `run` rebuilds. It is missing when it was never trained or its training was
interrupted. Loading asks the narrower question with the same comparison (`stale_inputs`): do the inputs
it reads (the user vectors, the target model) still have the fingerprints the model was trained with?
So a strategy still loads beside the user vectors it was trained on until `embed` replaces them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from xdrec.checkpoint import BUILT_FROM, CONFIG, RUN, Checkpoint, read_checkpoint, readable_config
from xdrec.checkpoint import rebuild_command as command_for
from xdrec.data.dataset import Dataset
from xdrec.embedding import load_user_vectors
from xdrec.errors import XdrecError
from xdrec.models import BACKBONES
from xdrec.popularity import PopularityScorer
from xdrec.scoring import Scorer
from xdrec.sequence_scorer import backbone_from_checkpoint
from xdrec.strategies import STRATEGIES, Strategy, defaults_for
from xdrec.strategies.base import REVERSE, ScoringInputs
from xdrec.training import TrainConfig
from xdrec.workspace import Workspace, read_json

POPULARITY = "popularity"
# The order models appear in reports: baselines first, then the strategies in registry order.
REPORT_ORDER = ("popularity", "source-only", "target-only", *STRATEGIES)

State = Literal["fresh", "stale", "missing"]


# ---------------------------------------------------------------------------------------------- listing


def records(workspace: Workspace) -> dict[str, dict]:
    """Every model folder in models/ that holds a config.json, by name (sorted): what each records."""
    root = workspace.root / "models"
    configs = sorted(root.glob(f"*/{CONFIG}")) if root.exists() else []
    return {config.parent.name: read_json(config) for config in configs}


def record_domains(config: Mapping[str, Any]) -> tuple[str, ...]:
    """What a config.json says its model scores: `domains` (a model of both), else its `domain`."""
    return tuple(config.get("domains") or ([config["domain"]] if "domain" in config else []))


def _report_rank(name: str) -> tuple[int, str]:
    rank = {n: i for i, n in enumerate(REPORT_ORDER)}  # a reverse strategy sits with its strategy
    return rank.get(name.removesuffix(REVERSE), len(rank)), name


def trained_models(workspace: Workspace, dataset: Dataset, domain: str) -> list[str]:
    """Names of the models in models/ trained on `dataset` that score `domain`, in report order."""
    found = [
        name
        for name, meta in records(workspace).items()
        if domain in record_domains(meta)
        and meta.get("dataset", {}).get("manifest_hash") == dataset.manifest_hash
    ]
    return sorted(found, key=_report_rank)


def _record(workspace: Workspace, name: str) -> dict | None:
    path = workspace.model_dir(name) / CONFIG
    return read_json(path) if path.exists() else None


def model_fingerprint(workspace: Workspace, name: str) -> str | None:
    """The fingerprint of models/<name>/'s weights: None for popularity (no weights), "missing" when
    there is no such model (so it never equals a recorded fingerprint)."""
    if name == POPULARITY:
        return None
    record = _record(workspace, name)
    return record.get("fingerprint") if record is not None else "missing"


def model_domains(workspace: Workspace, name: str) -> tuple[str, ...] | None:
    """The domains models/<name>/ scores (None: no such model, or popularity, which scores any)."""
    record = _record(workspace, name) if name != POPULARITY else None
    return record_domains(record) if record is not None else None


def serves(workspace: Workspace, name: str, segment: str) -> bool:
    """Whether models/<name>/ scores `segment` from real evidence (baselines and backbones: not cold)."""
    if name == POPULARITY:
        return True
    record = _record(workspace, name)
    strategy = STRATEGIES.get(record.get("strategy", "")) if record is not None else None
    return segment in strategy.serves if strategy is not None else segment != "cold"


# ------------------------------------------------------------------------------ expected versus missing


@dataclass(frozen=True)
class Absent:
    """A model a report should have and does not: what is wrong, and the command that makes it."""

    model: str
    reason: str  # what is wrong, in words
    fix: str  # the command that makes it

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        return f"{self.model}: {self.reason} (`{self.fix}`)"


def expected_models(workspace: Workspace, data: Dataset, domain: str) -> list[str]:
    """The models a default pipeline trains for `domain` (its backbone, plus the default strategies on the
    target), and any other model trained, or being trained when interrupted, for a domain of that name."""
    default = ["target-only", *defaults_for(data.split)] if domain == data.target else ["source-only"]
    trained = [name for name, record in records(workspace).items() if record.get("domain") == domain]
    started = [
        run.parent.name
        for run in sorted(workspace.runs_dir.glob(f"*/{RUN}"))
        if read_json(run).get("identity", {}).get("record", {}).get("domain") == domain
    ]
    return list(dict.fromkeys([*default, *trained, *started]))


def rebuild_command(data: Dataset, name: str) -> str:
    """The command that makes models/<name>/ on `data`, from its name alone (it may not exist yet)."""
    strategy = name.removesuffix(REVERSE)
    if strategy in STRATEGIES:
        reverse = strategy != name  # trained into the dataset's source
        return command_for(strategy, data.source if reverse else data.target, reverse=reverse)
    return command_for(None, data.target if name == "target-only" else data.source)


def untrained(workspace: Workspace, data: Dataset, domain: str, present: list[str]) -> list[Absent]:
    """Expected models of `domain` that are not among `present`, each with the reason and the fix: not
    trained, interrupted, or trained on another prepared dataset (a model of this dataset for another
    domain is not this report's)."""
    absent = []
    for name in expected_models(workspace, data, domain):
        if name in present:
            continue
        state = _dataset_state(workspace, data, name)
        if state is not None:
            absent.append(state)
    return absent


def _dataset_state(workspace: Workspace, data: Dataset, name: str) -> Absent | None:
    """Why models/<name>/ is not a model of `data` (missing, interrupted, another dataset); None if it is."""
    folder = workspace.model_dir(name)
    fix = rebuild_command(data, name)
    if not (folder / CONFIG).exists():
        if (workspace.run_dir(name) / "train_state").is_dir():
            return Absent(name, "its training was interrupted before it finished", f"{fix} --resume")
        return Absent(name, "not trained", fix)
    try:
        read_checkpoint(folder, data)
    except XdrecError:
        return Absent(name, "trained on another prepared dataset (re-prepared since)", fix)
    return None


def strict_error(absent: list[Absent]) -> XdrecError:
    return XdrecError(
        f"{len(absent)} model(s) missing or stale (--strict): " + "; ".join(a.line() for a in absent)
    )


# ------------------------------------------------------------------------------ freshness and lineage


def stale_inputs(config: Mapping[str, Any], current: Mapping[str, str | None]) -> list[str]:
    """The models in `current` whose fingerprint differs from the one `config` recorded in `built_from`."""
    recorded = config.get(BUILT_FROM, {})
    return [name for name, fingerprint in current.items() if recorded.get(name) != fingerprint]


def current_inputs(workspace: Workspace, config: Mapping[str, Any]) -> dict[str, str | None]:
    """{model name: fingerprint of models/<name>/ now} for every model `config` was built from."""
    return {model: model_fingerprint(workspace, model) for model in config.get(BUILT_FROM, {})}


def check_lineage(checkpoint: Checkpoint, current: Mapping[str, str | None]) -> None:
    """Raise if a model `checkpoint` was built from has other weights now than it had at training time.

    `current`: {model name: fingerprint of what the workspace holds now}, for the inputs scoring reads.
    """
    stale = stale_inputs(checkpoint.config, current)
    if stale:
        raise XdrecError(
            f"model {checkpoint.path.name} was trained on an earlier {stale[0]} than the workspace now "
            f"holds: re-run `{checkpoint.retrain_command}` (or `xdrec run`)"
        )


def is_current(
    workspace: Workspace,
    name: str,
    data: Dataset,
    train: TrainConfig,
    architecture: Mapping[str, object],
    strategy: Strategy | None = None,
    **expected: object,
) -> bool:
    """models/<name>/ was trained on `data` with `train`, the `architecture` values (for a model that
    records one) and the `expected` config values, from inputs that were not retrained since: what `run`
    reuses. A `strategy`'s model must also name the target model it `needs` (one from before the strategy
    needed it still loads, but `run` retrains it to the current contract)."""
    config = _record(workspace, name)
    if config is None:
        return False
    same_data = config.get("dataset", {}).get("manifest_hash") == data.manifest_hash
    model = config.get("model")
    same_model = model is None or all(model.get(k) == v for k, v in architecture.items())
    contract = strategy is None or "target_model" not in strategy.needs or "target_model" in config
    return (
        same_data
        and same_model
        and config.get("train") == asdict(train)
        and all(config.get(k) == v for k, v in expected.items())
        and not stale_inputs(config, current_inputs(workspace, config))
        and contract
    )


@dataclass(frozen=True)
class ModelState:
    """One model of a dataset as `xdrec status` shows it."""

    model: str
    domains: tuple[str, ...]  # what it scores (for a missing model: the domain it is expected for)
    state: State
    reason: str  # why it is stale or missing ("" when fresh)
    fix: str  # the command that (re)builds it

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "domains": list(self.domains)}


def model_state(workspace: Workspace, data: Dataset, name: str, domain: str) -> ModelState:
    """Whether models/<name>/ (expected for `domain`) is fresh, stale or missing on `data`, and why."""
    record = _record(workspace, name)
    domains = record_domains(record) if record is not None and record_domains(record) else (domain,)
    absent = _dataset_state(workspace, data, name)
    if absent is not None:
        state: State = "missing" if record is None else "stale"
        return ModelState(name, domains, state, absent.reason, absent.fix)
    assert record is not None  # _dataset_state read it
    fix = rebuild_command(data, name)
    stale = stale_inputs(record, current_inputs(workspace, record))
    if stale:
        return ModelState(name, domains, "stale", f"{stale[0]} was retrained since", fix)
    return ModelState(name, domains, "fresh", "", fix)


def model_states(workspace: Workspace, data: Dataset) -> list[ModelState]:
    """Every model `data` should have and every model in models/, each once, in report order."""
    names = {name: domain for domain in data.domains for name in expected_models(workspace, data, domain)}
    for name, record in records(workspace).items():
        names.setdefault(name, (record_domains(record) or ("?",))[0])
    return [model_state(workspace, data, n, names[n]) for n in sorted(names, key=_report_rank)]


# -------------------------------------------------------------------------------------------- loading


def load_scorer(
    workspace: Workspace,
    name: str,
    dataset: Dataset,
    device: str = "auto",
    domain: str | None = None,
    for_validation: bool = False,
) -> Scorer:
    """models/<name>/ (or the popularity baseline) as a Scorer of `domain` (default: the model's own;
    a model of both domains, `joint`, scores either). for_validation: to be ranked on the validation
    split, with the weights validation chose where the model was refitted on it (`Checkpoint.for_validation`).

    A strategy is loaded with the inputs it `needs` as the workspace holds them now, and refused if any
    of those were retrained since the strategy was trained (`check_lineage`).
    """
    if name == POPULARITY:
        return PopularityScorer.from_dataset(dataset, domain or dataset.target)
    checkpoint = read_checkpoint(workspace.model_dir(name), dataset)
    if for_validation:
        checkpoint = checkpoint.for_validation()
    with readable_config(checkpoint):
        return _load(workspace, checkpoint, dataset, device, domain, for_validation)


def _load(
    workspace: Workspace,
    checkpoint: Checkpoint,
    dataset: Dataset,
    device: str,
    domain: str | None,
    for_validation: bool = False,
) -> Scorer:
    name, config = checkpoint.path.name, checkpoint.config
    if domain is not None and domain not in record_domains(config):
        raise XdrecError(
            f"model {name} does not score {domain} items: it scores {' and '.join(record_domains(config))}"
        )
    strategy = STRATEGIES.get(config.get("strategy", ""))
    if strategy is None:
        if checkpoint.kind in BACKBONES:
            return backbone_from_checkpoint(checkpoint, device)
        kind = checkpoint.kind
        raise XdrecError(f"model {name} has kind {kind!r}, which this xdrec version cannot load: upgrade it")
    vectors = target_model = served_target = None
    current: dict[str, str | None] = {}
    if "source_vectors" in strategy.needs:
        vectors = load_user_vectors(workspace, dataset, config["embeddings"])
        current[config["embeddings"]] = vectors.model_fingerprint
    # A checkpoint from before its strategy needed the target model names none, and loads without it.
    if "target_model" in strategy.needs and "target_model" in config:
        # A model of both domains competes, in each, with that domain's single-domain model.
        single = (
            f"{dataset.role(domain)}-only" if strategy.both_domains and domain else config["target_model"]
        )
        # built on the weights validation chose; served beside the refitted ones (ScoringInputs.partner)
        single_checkpoint = read_checkpoint(workspace.model_dir(single), dataset)
        built_on = single_checkpoint.for_validation()
        target_model = backbone_from_checkpoint(built_on, device)
        if not for_validation and built_on.weights != single_checkpoint.weights:
            served_target = backbone_from_checkpoint(single_checkpoint, device)
        current[single] = target_model.fingerprint
    check_lineage(checkpoint, current)
    inputs = ScoringInputs(dataset, device, vectors, target_model, domain, served_target)
    scorer = strategy.load(checkpoint, inputs)
    scorer.name = name  # reported under its models/ name, as backbones are (<strategy>-reverse)
    return scorer
