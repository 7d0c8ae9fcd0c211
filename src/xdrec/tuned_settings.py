"""Settings `xdrec tune` chose, as stored in tuning/<dataset>/<model>.json, and how a stage applies them.

`pretrain`, `transfer` and `run` (from the command line) apply a model's stored settings to its configs,
except the fields the user set with an option: `with_params(config, tuned.params, keep=<given options>)`.
Settings chosen on another version of the dataset (its manifest changed since) are not used.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from xdrec.data.dataset import Dataset
from xdrec.errors import XdrecError
from xdrec.options import Param
from xdrec.workspace import Workspace, read_json

SETTINGS = ".json"
JOURNAL = ".journal"  # the study itself (xdrec.tuning), beside its settings


@dataclass(frozen=True)
class Tuned:
    """The settings a search chose, as stored in tuning/<dataset>/<model>.json."""

    model: str
    dataset: str
    manifest_hash: str
    metric: str
    value: float  # the best trial's validation score
    trial: int  # its number
    trials: int  # finished trials when it was written
    params: dict[str, Param] = field(default_factory=dict)


def settings_path(workspace: Workspace, dataset: str, model: str) -> Path:
    return workspace.tuning_dir(dataset) / f"{model}{SETTINGS}"


def load_tuned(workspace: Workspace, data: Dataset, model: str) -> Tuned | None:
    """The stored settings for `model` on `data`; None when there are none or they were chosen on
    another version of the dataset (its manifest changed since). A file holding a value its model's
    search could not have chosen (edited by hand) is refused, naming it."""
    path = settings_path(workspace, data.name, model)
    if not path.exists():
        return None
    try:
        tuned = Tuned(**read_json(path))
    except TypeError as e:  # a missing or unknown key
        raise XdrecError(
            f"{path} is not a settings file `xdrec tune` wrote ({e}): run `xdrec tune {model} --restart` "
            "or delete the file"
        ) from None
    if tuned.manifest_hash != data.manifest_hash:
        return None
    from xdrec.tuning import check_settings  # the search space (optuna): read only where settings exist

    check_settings(model, tuned.params, path)
    return tuned


C = TypeVar("C")


def with_params(config: C, params: Mapping[str, Param], keep: Collection[str] = ()) -> C:
    """`config` (a config dataclass) with the values `params` has for its fields, nested config dataclasses
    included (a TransferConfig's `train`), except the fields named in `keep` (the options the user set
    explicitly, which always win over tuned settings). A strategy's own options are its `with_params`."""
    changes: dict[str, Any] = {}
    for f in fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            nested = with_params(value, params, keep)
            if nested is not value:
                changes[f.name] = nested
        elif f.name in params and f.name not in keep and params[f.name] != value:
            changes[f.name] = params[f.name]
    return replace(config, **changes) if changes else config  # type: ignore[type-var]


Configs = TypeVar("Configs", bound=tuple)


def apply_tuned(
    workspace: Workspace,
    data: Dataset,
    model: str,
    configs: Configs,
    keep: Collection[str] = (),
    apply: Callable[[Any, Mapping[str, Param], Collection[str]], Any] = with_params,
) -> tuple[Configs, Tuned | None]:
    """Each of `configs` with `model`'s stored settings on `data` applied (`apply`: `with_params`, or a
    strategy's, which knows its own options), except the fields in `keep`; and those settings (None:
    none stored for this dataset, `configs` unchanged)."""
    tuned = load_tuned(workspace, data, model)
    if tuned is None:
        return configs, None
    try:
        return tuple(apply(c, tuned.params, keep) for c in configs), tuned  # type: ignore[return-value]
    except ValueError as e:  # a config's own check, e.g. a given --hidden that the tuned heads do not divide
        path = settings_path(workspace, data.name, model)
        raise XdrecError(
            f"the settings tuned for {model} ({path}) do not fit the options given ({e}): give the "
            "conflicting option too, or tune again"
        ) from None
