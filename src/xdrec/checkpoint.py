"""Model checkpoints as safetensors + JSON: loading never unpickles.

    models/<name>/model.safetensors   the weights
    models/<name>/config.json         kind, hyper-parameters, domain, dataset name + manifest hash,
                                      vocabulary size, loss, epochs run, best validation metric, version
    models/<name>/metrics.jsonl       the per-epoch log of the training that produced these weights

The folder is written whole (a new folder swapped in): a kill leaves the old model or the new one. While
training runs, its resumable state and live log are in runs/<name>/ (see `run_dir`).

A checkpoint refuses a dataset whose manifest hash differs from the one it was trained on: item ids are
only meaningful within one prepared dataset. The weights file's own header records that hash too, and
the loader compares the vocabulary size with the dataset's, so a model copied from another workspace
with its config.json edited to this dataset's hash is refused, not scored.

Lineage: config.json holds the weights' `fingerprint` (a prefix of their sha256), and a model built from
other models (a transfer strategy, user vectors) records their fingerprints under `built_from`. A model
whose inputs were retrained since is stale: loading refuses it, and `xdrec run` retrains it (xdrec.store
answers which models are fresh, stale or missing).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

import xdrec
from xdrec.errors import XdrecError, first_line
from xdrec.workspace import atomic_path, file_sha256, read_json, write_json

if TYPE_CHECKING:
    from xdrec.data.dataset import Dataset

WEIGHTS = "model.safetensors"
# A model refitted with the validation items as labels too (`fit.Plan.refit`) keeps the weights validation
# chose here: choices made on validation read these, since the refitted ones have learnt its answers.
VALIDATION_WEIGHTS = "validation.safetensors"
METRICS = "metrics.jsonl"  # the trainer's per-epoch log (training.METRICS)
CONFIG = "config.json"
BUILT_FROM = "built_from"  # config key: {model name: fingerprint} of the models this one was built from
MANIFEST_HASH = "manifest_hash"  # weights header key: the dataset the weights were trained on


def save_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as one safetensors file, atomically (contiguous CPU copies, so views are fine)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata)


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    if not path.exists():
        raise XdrecError(f"{path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise XdrecError(f"{path} is not a readable safetensors file ({e}); retrain to rewrite it") from None


def dataset_identity(dataset: Dataset) -> dict[str, str]:
    return {"name": dataset.name, "manifest_hash": dataset.manifest_hash}


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict[str, Any]
    weights: str = WEIGHTS  # which of the folder's weights state_dict reads

    @property
    def kind(self) -> str:
        return self.config["kind"]

    def state_dict(self, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        return load_tensors(self.path / self.weights, device)

    def for_validation(self) -> Checkpoint:
        """This model as choices on the validation split must see it: its weights from before a refit on
        the validation items (`VALIDATION_WEIGHTS`) where it was refitted, else the same."""
        refitted = (self.path / VALIDATION_WEIGHTS).exists()
        return replace(self, weights=VALIDATION_WEIGHTS) if refitted else self

    @property
    def fingerprint(self) -> str | None:
        """Identifies these weights (None for checkpoints written before fingerprints existed)."""
        return self.config.get("fingerprint")

    def check_dataset(self, dataset: Dataset) -> None:
        """Raise unless this checkpoint was trained on `dataset`: the manifest hash its config.json and
        its weights' header record (older weights have none), and a backbone's item vocabulary size."""
        trained = self.config.get("dataset")
        trained = trained if isinstance(trained, dict) else {}
        if trained.get("manifest_hash") != dataset.manifest_hash:
            raise XdrecError(
                f"model {self.path.name} was trained on dataset {trained.get('name', '?')} "
                f"(manifest {trained.get('manifest_hash', '?')}), not on {dataset.name} "
                f"(manifest {dataset.manifest_hash}): retrain it on this dataset: `{self.retrain_command}`"
            )
        weights = self._weights_metadata().get(MANIFEST_HASH)
        model = self.config.get("model")  # a backbone's own vocabulary (a strategy's may hold extra ids)
        single = isinstance(model, dict) and "strategy" not in self.config
        vocabulary = model.get("n_items") if single else None
        domain = self.config.get("domain")
        if weights not in (None, dataset.manifest_hash) or (
            vocabulary is not None and domain in dataset.domains and vocabulary != dataset.n_items(domain)
        ):
            found = f"manifest {weights}" if weights != dataset.manifest_hash else f"{vocabulary} items"
            raise XdrecError(
                f"model {self.path.name}'s weights were trained on another dataset ({found}) than its "
                f"config.json says ({dataset.name}): a model copied from another workspace? retrain it on "
                f"this dataset: `{self.retrain_command}`"
            )

    def _weights_metadata(self) -> dict[str, str]:
        try:
            with safe_open(str(self.path / WEIGHTS), framework="pt") as f:
                return f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise XdrecError(
                f"{self.path / WEIGHTS} is not a readable safetensors file ({first_line(e)}); retrain it "
                f"(`{self.retrain_command}`)"
            ) from None

    @property
    def retrain_command(self) -> str:
        """The command that rewrites this model, from what its config.json records (`rebuild_command`)."""
        config = self.config
        # A strategy's record names it (one that loads as a backbone, finetune, has the backbone's kind);
        # the single-domain models are <role>-only.
        single = self.path.name in ("source-only", "target-only")
        strategy = config.get("strategy") or (None if single else self.path.name)
        domain = config.get("domain", "DOMAIN")
        return rebuild_command(strategy, domain, reverse=config.get("role") == "source")


def rebuild_command(strategy: str | None, domain: str, *, reverse: bool = False) -> str:
    """The command that (re)writes a model: `pretrain --domain` for a single-domain model (strategy None),
    else its strategy's `transfer`, with --domain when it was trained into the dataset's source
    (models/<strategy>-reverse/)."""
    if strategy is None:
        return f"xdrec pretrain --domain {domain}"
    return f"xdrec transfer --strategy {strategy}" + (f" --domain {domain}" if reverse else "")


def save_checkpoint(
    model_dir: Path,
    state: Mapping[str, Tensor],
    config: Mapping[str, Any],
    validation_state: Mapping[str, Tensor] | None = None,
) -> Checkpoint:
    """Write the model folder as one unit: weights, config and the training's metrics.jsonl (from
    `run_dir(model_dir)`, where the trainer logs while it runs) in a new folder that replaces the old one
    atomically. A kill at any instant leaves the previous model or this one, never a mix.

    `config` must hold `kind` and `dataset`. validation_state: a refitted model's weights from before the
    refit (`VALIDATION_WEIGHTS`)."""
    for key in ("kind", "dataset"):
        if key not in config:
            raise ValueError(f"checkpoint config needs {key!r}")
    manifest = config["dataset"].get("manifest_hash")
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        header = {MANIFEST_HASH: str(manifest)} if manifest else None
        save_tensors(tmp / WEIGHTS, state, header)
        if validation_state is not None:
            save_tensors(tmp / VALIDATION_WEIGHTS, validation_state, header)
        full = {**config, "xdrec_version": xdrec.__version__, "fingerprint": fingerprint(tmp / WEIGHTS)}
        log = run_dir(model_dir) / METRICS
        if log.exists():
            shutil.copyfile(log, tmp / METRICS)
        write_json(tmp / CONFIG, full)
    return Checkpoint(model_dir, json.loads(json.dumps(full)))


def interrupted_epoch(model_dir: Path) -> int | None:
    """The last finished epoch of a training of `model_dir` that was interrupted (runs/<name>/ holds its
    state and its run.json says it never finished), or None when there is none."""
    state, run = run_dir(model_dir) / "train_state" / "state.json", run_dir(model_dir) / RUN  # STATE_DIR
    try:
        if not state.exists() or read_json(run).get("finished", True):
            return None
        return int(read_json(state)["epoch"])
    except (XdrecError, KeyError, TypeError, ValueError):
        return None


RUN = "run.json"  # runs/<name>/run.json: what the training there was started with, and if it finished


def start_run(model_dir: Path, identity: Mapping[str, Any], resume: bool | None) -> bool:
    """Record what a training of `model_dir` starts with; return whether it resumes the interrupted one.

    resume None: only if there is an interrupted run started with the same `identity` (the model's record
    and training configuration), so a rerun continues where a kill stopped it and never continues another
    run. True/False: as asked (the trainer refuses a state that does not fit)."""
    path = run_dir(model_dir) / RUN
    same = as_recorded(identity)
    if resume is None:
        resume = interrupted_epoch(model_dir) is not None and last_run(model_dir) == same
    write_json(path, {"identity": same, "finished": False})
    return resume


def last_run(model_dir: Path) -> dict[str, Any] | None:
    """What the last training of `model_dir` was started with (`start_run`'s identity); None if unknown."""
    path = run_dir(model_dir) / RUN
    try:
        identity = read_json(path).get("identity") if path.exists() else None
    except XdrecError:
        return None
    return identity if isinstance(identity, dict) else None


def as_recorded(identity: Mapping[str, Any]) -> dict[str, Any]:
    """`identity` as run.json holds it (JSON types), for comparing with a recorded one."""
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def finish_run(model_dir: Path) -> None:
    """Mark the training of `model_dir` finished and drop its resumable state (the optimizer's moments and
    two copies of the weights, several times the model's size): only an interrupted run needs it."""
    path = run_dir(model_dir) / RUN
    write_json(path, read_json(path) | {"finished": True})
    shutil.rmtree(run_dir(model_dir) / "train_state", ignore_errors=True)  # xdrec.training.STATE_DIR


def run_dir(model_dir: Path) -> Path:
    """models/<name>/ -> runs/<name>/: the trainer's resumable state and live log (`out_dir` of train)."""
    return model_dir.parent.parent / "runs" / model_dir.name


def fingerprint(path: Path) -> str:
    """A prefix of the file's sha256: enough to tell two trainings' weights apart."""
    return file_sha256(path)[:16]


@contextlib.contextmanager
def readable_config(checkpoint: Checkpoint) -> Iterator[None]:
    """Word a config.json that does not describe its model (edited by hand: a missing key, a string for
    a number, heads that do not divide the hidden size) as one line naming the file and the fix."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError, RuntimeError) as e:
        if isinstance(e, XdrecError):
            raise
        raise XdrecError(
            f"{checkpoint.path / CONFIG} does not describe a model xdrec can load ({type(e).__name__}: "
            f"{first_line(e)[:160]}): retrain it (`{checkpoint.retrain_command}`)"
        ) from None


def read_checkpoint(model_dir: Path, dataset: Dataset | None = None, kind: str | None = None) -> Checkpoint:
    """Open `model_dir`; with `dataset`, refuse a mismatched one; with `kind`, refuse another model kind."""
    if not (model_dir / CONFIG).exists() or not (model_dir / WEIGHTS).exists():
        raise XdrecError(
            f"no trained model {model_dir.name!r} in {model_dir.parent}: "
            "run `xdrec pretrain` (or `xdrec transfer`) first"
        )
    checkpoint = Checkpoint(model_dir, read_json(model_dir / CONFIG))
    if kind is not None and checkpoint.config.get("kind") != kind:
        raise XdrecError(f"model {model_dir.name} is a {checkpoint.config.get('kind')!r} model, not {kind!r}")
    if dataset is not None:
        checkpoint.check_dataset(dataset)
    return checkpoint


# --- optimizer state, for resuming training (torch.save would pickle it) ---


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (`state.<param>.<name>`) and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in sd["state"].items():
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (AdamW's betas) into lists: restore the live optimizer's types.
    groups = [
        {k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in saved.items()}
        for saved, live in zip(meta["param_groups"], optimizer.param_groups, strict=True)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
