"""Every trained model in a workspace, loaded as a `Scorer` by the kind its config.json records.

Used by `evaluate`, `recommend` and `run`: they name models, the zoo finds and loads them.
"""

from __future__ import annotations

from pathlib import Path

from xdrec.backbone import backbone_from_checkpoint, load_backbone
from xdrec.checkpoint import CONFIG, Checkpoint, read_checkpoint, readable_config
from xdrec.data.dataset import Dataset
from xdrec.embedding import load_user_vectors
from xdrec.errors import XdrecError
from xdrec.models import BACKBONES
from xdrec.popularity import PopularityScorer
from xdrec.scoring import Scorer
from xdrec.strategies import STRATEGIES
from xdrec.strategies.base import REVERSE, ScoringInputs
from xdrec.workspace import Workspace, read_json

POPULARITY = "popularity"
# The order models appear in reports: baselines first, then the strategies in registry order.
REPORT_ORDER = ("popularity", "source-only", "target-only", *STRATEGIES)


def model_records(workspace: Workspace) -> dict[str, dict]:
    """Every model folder in models/ that holds a config.json, by name (sorted): what each records."""
    root = workspace.root / "models"
    configs = sorted(root.glob(f"*/{CONFIG}")) if root.exists() else []
    return {config.parent.name: read_json(config) for config in configs}


def trained_models(workspace: Workspace, dataset: Dataset, domain: str) -> list[str]:
    """Names of the models in models/ trained on `dataset` that score `domain`, in report order."""
    found = [
        name
        for name, meta in model_records(workspace).items()
        if domain in _domains(meta) and meta.get("dataset", {}).get("manifest_hash") == dataset.manifest_hash
    ]
    rank = {name: i for i, name in enumerate(REPORT_ORDER)}  # a reverse strategy sits with its strategy
    return sorted(found, key=lambda n: (rank.get(n.removesuffix(REVERSE), len(rank)), n))


def load_scorer(
    workspace: Workspace, name: str, dataset: Dataset, device: str = "auto", domain: str | None = None
) -> Scorer:
    """models/<name>/ (or the popularity baseline) as a Scorer of `domain` (default: the model's own;
    a model of both domains, `joint`, scores either).

    A strategy is loaded with the inputs it `needs` as the workspace holds them now, and refused if any
    of those were retrained since the strategy was trained (its lineage, see xdrec.checkpoint).
    """
    if name == POPULARITY:
        return PopularityScorer.from_dataset(dataset, domain or dataset.target)
    checkpoint = read_checkpoint(workspace.model_dir(name), dataset)
    with readable_config(checkpoint):
        return _load(workspace, checkpoint, dataset, device, domain)


def _load(
    workspace: Workspace, checkpoint: Checkpoint, dataset: Dataset, device: str, domain: str | None
) -> Scorer:
    name, config = checkpoint.path.name, checkpoint.config
    if domain is not None and domain not in _domains(config):
        raise XdrecError(
            f"model {name} does not score {domain} items: it scores {' and '.join(_domains(config))}"
        )
    strategy = STRATEGIES.get(config.get("strategy", ""))
    if strategy is None:
        if checkpoint.kind in BACKBONES:
            return backbone_from_checkpoint(checkpoint, device)
        kind = checkpoint.kind
        raise XdrecError(f"model {name} has kind {kind!r}, which this xdrec version cannot load: upgrade it")
    vectors = target_model = None
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
        target_model = load_backbone(workspace, single, dataset, device)
        current[single] = target_model.fingerprint
    checkpoint.check_built_from(current)
    scorer = strategy.load(checkpoint, ScoringInputs(dataset, device, vectors, target_model, domain))
    scorer.name = (
        checkpoint.path.name
    )  # reported under its models/ name, as backbones are (<strategy>-reverse)
    return scorer


def serves(workspace: Workspace, name: str, segment: str) -> bool:
    """Whether models/<name>/ scores `segment` from real evidence (baselines and backbones: not cold)."""
    if name == POPULARITY:
        return True
    path = workspace.model_dir(name) / CONFIG
    strategy = STRATEGIES.get(read_json(path).get("strategy", "")) if path.exists() else None
    return segment in strategy.serves if strategy is not None else segment != "cold"


def model_fingerprint(workspace: Workspace, name: str) -> str | None:
    """The fingerprint of models/<name>/'s weights: None for popularity (no weights), "missing" when
    there is no such model (so it never equals a recorded fingerprint)."""
    if name == POPULARITY:
        return None
    path = workspace.model_dir(name) / CONFIG
    return read_json(path).get("fingerprint") if path.exists() else "missing"


def model_domains(workspace: Workspace, name: str) -> tuple[str, ...] | None:
    """The domains models/<name>/ scores (None: no such model, or popularity, which scores any)."""
    path: Path = workspace.model_dir(name) / CONFIG
    return _domains(read_json(path)) if path.exists() else None


def _domains(config: dict) -> tuple[str, ...]:
    """What a config.json says its model scores: `domains` (a model of both), else its `domain`."""
    return tuple(config.get("domains") or ([config["domain"]] if "domain" in config else []))
