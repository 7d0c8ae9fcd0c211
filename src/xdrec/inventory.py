"""Which models a domain's report should have and does not, and why: named, never silently left out.

`evaluate` and `recommend` show these beside their results (table caption, `--json` "absent"), and
`--strict` turns them into an error. A model is absent when it was never trained, when its last training
was interrupted before it wrote models/<name>/, when it was trained on another prepared dataset, or when
a model it was built from was retrained since (stale lineage).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xdrec.checkpoint import CONFIG, RUN, read_checkpoint, rebuild_command
from xdrec.data.dataset import Dataset
from xdrec.errors import XdrecError
from xdrec.strategies import DEFAULT, STRATEGIES
from xdrec.strategies.base import REVERSE
from xdrec.workspace import Workspace, read_json
from xdrec.zoo import model_records


@dataclass(frozen=True)
class Absent:
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
    default = ["target-only", *DEFAULT] if domain == data.target else ["source-only"]
    trained = [name for name, record in model_records(workspace).items() if record.get("domain") == domain]
    started = [
        run.parent.name
        for run in sorted(workspace.runs_dir.glob(f"*/{RUN}"))
        if read_json(run).get("identity", {}).get("record", {}).get("domain") == domain
    ]
    return list(dict.fromkeys([*default, *trained, *started]))


def retrain_command(data: Dataset, name: str) -> str:
    """The command that makes models/<name>/ on `data`, from its name alone (it may not exist yet)."""
    strategy = name.removesuffix(REVERSE)
    if strategy in STRATEGIES:
        reverse = strategy != name  # trained into the dataset's source
        return rebuild_command(strategy, data.source if reverse else data.target, reverse=reverse)
    return rebuild_command(None, data.target if name == "target-only" else data.source)


def untrained(workspace: Workspace, data: Dataset, domain: str, present: list[str]) -> list[Absent]:
    """Expected models of `domain` that are not among `present`, each with the reason and the fix."""
    absent = []
    for name in expected_models(workspace, data, domain):
        if name in present:
            continue
        folder = workspace.model_dir(name)
        fix = retrain_command(data, name)
        if (workspace.run_dir(name) / "train_state").is_dir() and not (folder / CONFIG).exists():
            absent.append(Absent(name, "its training was interrupted before it finished", f"{fix} --resume"))
        elif (folder / CONFIG).exists():
            try:
                read_checkpoint(folder, data)
                continue  # trained on this dataset, for another domain: not this report's
            except XdrecError:
                absent.append(Absent(name, "trained on another prepared dataset (re-prepared since)", fix))
        else:
            absent.append(Absent(name, "not trained", fix))
    return absent


def strict_error(absent: list[Absent]) -> XdrecError:
    return XdrecError(
        f"{len(absent)} model(s) missing or stale (--strict): " + "; ".join(a.line() for a in absent)
    )
