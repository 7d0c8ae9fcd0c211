"""`xdrec embed`: user vectors from the pretrained source model, usable inside and outside xdrec.

For every user with source-domain history (`Dataset.context_sequences`: the training split, plus the
validation item under the mixed split): the source SASRec's last hidden state over that history (the most
recent max_len items, left-padded), computed in batches. Written as

    embeddings/<model>.safetensors   "vectors" (N, D) float32 and "user_id" (N,) int64 (dataset user ids)
    embeddings/<model>.users.parquet user (raw id), user_id, row (row of `vectors`)

with the dataset's manifest hash and the source model's fingerprint in the safetensors metadata, so vectors
of another dataset are refused, and a strategy trained on other vectors can tell (see xdrec.checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from xdrec.data.dataset import Dataset
from xdrec.errors import XdrecError
from xdrec.progress import counting
from xdrec.scoring import pad_left
from xdrec.sequence_scorer import load_backbone
from xdrec.workspace import Workspace, atomic_path

SOURCE_MODEL = "source-only"
MODEL_FINGERPRINT = "model_fingerprint"  # metadata key


@dataclass(frozen=True)
class EmbedResult:
    model: str
    path: Path
    index: Path
    users: int
    dim: int


@dataclass(frozen=True)
class UserVectors:
    """Source vectors by dataset user id: `vectors[u]` is zero where `known[u]` is False."""

    vectors: torch.Tensor  # (n_users, D) float32
    known: torch.Tensor  # (n_users,) bool: the user has source history
    model_fingerprint: str | None = None  # of the source model that computed them

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


def embed(
    workspace: Workspace,
    *,
    dataset: str | None = None,
    model: str = SOURCE_MODEL,
    device: str = "auto",
    batch_size: int = 1024,
    progress: bool = True,
) -> EmbedResult:
    """Every user's vector from `model` (a single-domain backbone) over their history in its domain, into
    embeddings/<model>.safetensors and its raw-user-id index. progress: a bar on stderr."""
    data = Dataset.from_workspace(workspace, dataset)
    # the weights validation chose: the strategies trained on these vectors are chosen on validation
    scorer = load_backbone(workspace, model, data, device, for_validation=True)
    sequences = data.context_sequences(scorer.domain or data.source)
    max_len = scorer.model.cfg.max_len
    chunks = []
    with torch.no_grad(), counting(f"embed {model}", "users", enabled=progress) as update:
        for start in range(0, sequences.height, batch_size):
            update(start, sequences.height)
            history = pad_left(sequences["items"][start : start + batch_size], max_len).to(scorer.device)
            chunks.append(scorer.model.user_vector(history).float().cpu())  # (B, D)
        update(sequences.height, sequences.height)
    vectors = torch.cat(chunks) if chunks else torch.zeros(0, scorer.model.cfg.hidden)
    user_ids = torch.from_numpy(sequences["user_id"].to_numpy().astype("int64"))
    path = workspace.embeddings(model)
    metadata = {"model": model, "dataset": data.name, "manifest_hash": data.manifest_hash}
    if scorer.fingerprint is not None:
        metadata[MODEL_FINGERPRINT] = scorer.fingerprint
    with atomic_path(path) as tmp:
        save_file({"vectors": vectors.contiguous(), "user_id": user_ids}, str(tmp), metadata=metadata)
    index = _index_path(path)
    rows = sequences.select("user_id").with_row_index("row").join(data.users, on="user_id")
    with atomic_path(index) as tmp:
        rows.select("user", "user_id", pl.col("row").cast(pl.Int64)).sort("row").write_parquet(tmp)
    return EmbedResult(model, path, index, vectors.shape[0], vectors.shape[1])


def load_user_vectors(workspace: Workspace, dataset: Dataset, model: str = SOURCE_MODEL) -> UserVectors:
    """The vectors `embed` wrote, scattered into a dense (n_users, D) table; refuses a stale file."""
    path = workspace.embeddings(model)
    if not path.exists():
        raise XdrecError(f"no user vectors at {path}: run `xdrec embed` first")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("manifest_hash") != dataset.manifest_hash:
            raise XdrecError(
                f"{path} was computed on another dataset than {dataset.name}: re-run `xdrec embed`"
            )
        vectors, user_ids = f.get_tensor("vectors"), f.get_tensor("user_id")
    n_users = dataset.users.height
    dense = torch.zeros(n_users, vectors.shape[1])
    known = torch.zeros(n_users, dtype=torch.bool)
    dense[user_ids] = vectors
    known[user_ids] = True
    return UserVectors(dense, known, metadata.get(MODEL_FINGERPRINT))


def embeddings_match(path: Path, dataset: Dataset, model_fingerprint: str | None) -> bool:
    """Whether the vectors at `path` were computed on `dataset` by the model with that fingerprint."""
    if not path.exists():
        return False
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return (
        metadata.get("manifest_hash") == dataset.manifest_hash
        and metadata.get(MODEL_FINGERPRINT) == model_fingerprint
    )


def _index_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".safetensors") + ".users.parquet")
