"""What a workspace holds, and whether each part is up to date: `xdrec status` and `xdrec users`.

`status` answers, for the prepared datasets (with the options each was prepared with), the models of one
of them (fresh, stale or missing, and the command that rebuilds each: `xdrec.store`), the user vectors in
embeddings/ (computed on that dataset by the model now in models/?), the reports in reports/ and the
tuning studies in tuning/. It only reads: nothing is loaded but config and header records.

`users` lists raw user ids by segment, as `recommend` serves them (warm: history in both domains, cold:
source history only, <target role>-only: target history only), with whether the evaluation holds the
user out as cold-start, so a user id to try is one command away.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from safetensors import safe_open

from xdrec.data.dataset import Dataset
from xdrec.errors import OptionError, XdrecError
from xdrec.pipeline import user_segments
from xdrec.store import ModelState, model_fingerprint, model_states
from xdrec.tuned_settings import JOURNAL, SETTINGS
from xdrec.workspace import Workspace, read_json

HELD_OUT = "held-out"  # `users --segment held-out`: the evaluation's cold-start users


@dataclass(frozen=True)
class Status:
    """A workspace's contents; each entry a JSON-able dict (`models`: the store's `ModelState`s)."""

    workspace: str
    dataset: str | None  # the dataset the models are judged against (the current one unless given)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    models: list[ModelState] = field(default_factory=list)
    embeddings: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    tuning: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "dataset": self.dataset,
            "datasets": self.datasets,
            "models": [m.as_dict() for m in self.models],
            "embeddings": self.embeddings,
            "reports": self.reports,
            "tuning": self.tuning,
        }


def status(workspace: Workspace, dataset: str | None = None) -> Status:
    """What `workspace` holds; models and embeddings judged against `dataset` (default: the current one)."""
    if not workspace.root.is_dir():
        raise XdrecError(
            f"no workspace at {workspace.root}: pass --workspace, or start one with `xdrec fetch` "
            "(or `xdrec demo`)"
        )
    datasets = _datasets(workspace)
    if dataset is None and datasets:
        dataset = next((d["name"] for d in datasets if d["current"]), None)
    data = Dataset.from_workspace(workspace, dataset) if dataset is not None else None
    return Status(
        workspace=str(workspace.root),
        dataset=data.name if data is not None else None,
        datasets=datasets,
        models=model_states(workspace, data) if data is not None else [],
        embeddings=_embeddings(workspace, data),
        reports=_reports(workspace),
        tuning=_tuning(workspace),
    )


def _datasets(workspace: Workspace) -> list[dict[str, Any]]:
    root = workspace.root / "datasets"
    manifests = sorted(root.glob("*/manifest.json")) if root.is_dir() else []
    try:
        current = workspace.current_dataset()
    except XdrecError:
        current = None
    out = []
    for path in manifests:
        manifest = read_json(path)
        out.append(
            {
                "name": path.parent.name,
                "current": path.parent.name == current,
                "source": manifest.get("source"),
                "target": manifest.get("target"),
                "options": manifest.get("parameters", {}),  # what `prepare` was given
                **{k: manifest.get(k) for k in ("users", "overlap_users", "cold_users")},
            }
        )
    return out


def _embeddings(workspace: Workspace, data: Dataset | None) -> list[dict[str, Any]]:
    """Every user-vector file, fresh when computed on `data` by the model models/ holds now; and the
    source model's, missing, when it has none."""
    root = workspace.root / "embeddings"
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else []
    out = []
    for path in files:
        name = path.name.removesuffix(".safetensors")
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        fix = "xdrec embed" + ("" if name == "source-only" else f" --model {name}")
        if data is None or metadata.get("manifest_hash") != data.manifest_hash:
            state, reason = "stale", "computed on another prepared dataset"
        elif metadata.get("model_fingerprint") != model_fingerprint(workspace, name):
            state, reason = "stale", f"{name} was retrained since"
        else:
            state, reason = "fresh", ""
        out.append({"name": name, "state": state, "reason": reason, "fix": fix, "path": str(path)})
    if data is not None and "source-only" not in {e["name"] for e in out}:
        out.insert(
            0, {"name": "source-only", "state": "missing", "reason": "not computed", "fix": "xdrec embed"}
        )
    return out


def _reports(workspace: Workspace) -> list[dict[str, Any]]:
    root = workspace.reports_dir
    files = sorted(root.glob("*/*/report*.json")) if root.is_dir() else []
    out = []
    for path in files:
        report = read_json(path)
        models = list(dict.fromkeys(r["model"] for r in report.get("results", [])))
        written = datetime.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
        out.append(
            {
                "dataset": path.parent.parent.name,
                "domain": path.parent.name,
                "protocol": report.get("protocol"),
                "models": models,
                "written": written,
                "path": str(path),
            }
        )
    return out


def _tuning(workspace: Workspace) -> list[dict[str, Any]]:
    """Every study in tuning/: its best finished trial when one is stored, else `started`."""
    root = workspace.root / "tuning"
    journals = sorted(root.glob(f"*/*{JOURNAL}")) if root.is_dir() else []
    out = []
    for journal in journals:
        model = journal.name.removesuffix(JOURNAL)
        settings = journal.with_name(model + SETTINGS)
        entry: dict[str, Any] = {"dataset": journal.parent.name, "model": model, "path": str(journal)}
        if settings.exists():
            best = read_json(settings)
            entry |= {"trials": best.get("trials"), "best_trial": best.get("trial")}
            entry |= {"metric": best.get("metric"), "value": best.get("value")}
        else:
            entry |= {"trials": 0, "best_trial": None, "metric": None, "value": None}
        out.append(entry)
    return out


# -------------------------------------------------------------------------------------------- users


def segments(data: Dataset) -> tuple[str, ...]:
    """What `users --segment` takes: `recommend`'s segments, and the evaluation's held-out users."""
    return ("warm", "cold", f"{data.role(data.target)}-only", HELD_OUT)


def users(
    workspace: Workspace, segment: str | None = None, *, limit: int | None = 10, dataset: str | None = None
) -> pl.DataFrame:
    """Raw user ids of `segment` (None: every user with history in the target or source), in user-id
    order, at most `limit` (None: all).

    returns: user, segment (as `recommend` serves them), held_out (a cold-start user of the evaluation,
             whose whole target history is in the test split), source (their interactions in the source
             domain), target (in the target domain).
    """
    if limit is not None and limit < 1:
        raise OptionError("--limit must be at least 1")
    data = Dataset.from_workspace(workspace, dataset)
    if segment is not None and segment not in segments(data):
        raise OptionError(f"unknown segment {segment!r}: choose from {', '.join(segments(data))}")
    counts = (
        data.interactions()
        .group_by("user_id")
        .agg(
            source=(pl.col("domain") == data.source).sum().cast(pl.Int64),
            target=(pl.col("domain") == data.target).sum().cast(pl.Int64),
        )
        .collect()
    )
    frame = data.users.select("user_id", "user", held_out=pl.col("cold")).join(counts, on="user_id")
    if segment == HELD_OUT:
        frame = frame.filter(pl.col("held_out"))
    frame = user_segments(data, frame.sort("user_id"))
    if segment not in (None, HELD_OUT):
        frame = frame.filter(pl.col("segment") == segment)
    frame = frame.select("user", "segment", "held_out", "source", "target")
    return frame.head(limit) if limit is not None else frame
