"""Every trained model in a workspace, loaded as a `Scorer` by the kind its config.json records.

Used by `evaluate`, `recommend` and `run`: they name models, the zoo finds and loads them.
"""

from __future__ import annotations

from pathlib import Path

from xdrec.checkpoint import CONFIG, read_checkpoint
from xdrec.data.dataset import Dataset
from xdrec.devices import resolve_device
from xdrec.embed import load_user_vectors
from xdrec.errors import XdrecError
from xdrec.popularity import PopularityScorer
from xdrec.pretrain import KIND as SASREC
from xdrec.pretrain import load_sasrec
from xdrec.scoring import Scorer
from xdrec.transfer import fusion, joint, mapping
from xdrec.workspace import Workspace, read_json

POPULARITY = "popularity"
# The order models appear in reports: baselines first, then the strategies.
REPORT_ORDER = ("popularity", "source-only", "target-only", "mapping", "finetune", "fusion", "joint")


def trained_models(workspace: Workspace, dataset: Dataset, domain: str) -> list[str]:
    """Names of the models in models/ trained on `dataset` that score `domain`, in report order."""
    root = workspace.root / "models"
    found = []
    for config in sorted(root.glob(f"*/{CONFIG}")) if root.exists() else []:
        meta = read_json(config)
        if (
            meta.get("domain") == domain
            and meta.get("dataset", {}).get("manifest_hash") == dataset.manifest_hash
        ):
            found.append(config.parent.name)
    rank = {name: i for i, name in enumerate(REPORT_ORDER)}
    return sorted(found, key=lambda n: (rank.get(n, len(rank)), n))


def load_scorer(workspace: Workspace, name: str, dataset: Dataset, device: str = "auto") -> Scorer:
    """models/<name>/ (or the popularity baseline) as a Scorer of its domain."""
    if name == POPULARITY:
        return PopularityScorer.from_dataset(dataset, dataset.target)
    checkpoint = read_checkpoint(workspace.model_dir(name), dataset)
    kind, config = checkpoint.kind, checkpoint.config
    if kind == SASREC:
        return load_sasrec(workspace, name, dataset, device)
    torch_device = resolve_device(device)
    if kind == joint.NAME:
        return joint.load(checkpoint, dataset, torch_device)
    if kind not in (fusion.NAME, mapping.NAME):
        raise XdrecError(f"model {name} has kind {kind!r}, which this xdrec version cannot load: upgrade it")
    # fusion and mapping score with the source vectors (mapping also with the target model's items) as
    # they are now: refuse them if those were recomputed since the strategy was trained.
    vectors = load_user_vectors(workspace, dataset, config["embeddings"])
    inputs = {config["embeddings"]: vectors.model_fingerprint}
    if kind == fusion.NAME:
        checkpoint.check_built_from(inputs)
        return fusion.load(checkpoint, vectors, torch_device)
    target = load_sasrec(workspace, config["target_model"], dataset, device)
    checkpoint.check_built_from(inputs | {config["target_model"]: target.fingerprint})
    return mapping.load(checkpoint, vectors, target)


def model_domain(workspace: Workspace, name: str) -> str | None:
    path: Path = workspace.model_dir(name) / CONFIG
    return read_json(path).get("domain") if path.exists() else None
