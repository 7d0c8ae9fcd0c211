"""xdrec: cross-domain sequential recommendation.

The library API, one function per stage (the `xdrec` command line wraps exactly these):

    from xdrec import Workspace, PrepareConfig, EvaluateConfig
    from xdrec import fetch, prepare, pretrain, embed, transfer, evaluate, recommend, run

    ws = Workspace.at("my-workspace")
    fetch(ws, ["Books", "Movies_and_TV"])
    prepare(ws, "Books", "Movies_and_TV", PrepareConfig(cold_start=0.2))
    pretrain(ws)                                   # source-only
    pretrain(ws, domain="Movies_and_TV")           # target-only
    embed(ws)
    transfer(ws, ["fusion", "mapping"])
    report, paths = evaluate(ws, EvaluateConfig(ks=(10, 20)))

    tune(ws, "target-only", TuneConfig(trials=20))  # validation only; pretrain/run(tuned=True) use it

Each stage's configuration is one frozen dataclass (`PrepareConfig`, `TrainConfig`, `ModelOptions`,
`TransferConfig`, `EvaluateConfig`, `RunConfig`); `run` takes them all. Names are resolved on first use,
so `import xdrec` (and `xdrec --help`) loads neither torch nor polars.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "fetch": "xdrec.data.amazon",
    "prepare": "xdrec.data.prepare",
    "pretrain": "xdrec.pretraining",
    "embed": "xdrec.embedding",
    "transfer": "xdrec.strategies",
    "evaluate": "xdrec.pipeline",
    "recommend": "xdrec.pipeline",
    "run": "xdrec.pipeline",
    "demo": "xdrec.pipeline",
    "tune": "xdrec.tuning",
    "TuneConfig": "xdrec.tuning",
    "Workspace": "xdrec.workspace",
    "XdrecError": "xdrec.errors",
    "PrepareConfig": "xdrec.data.prepare",
    "TrainConfig": "xdrec.training",
    "ModelOptions": "xdrec.model_options",
    "SASRecConfig": "xdrec.models",
    "TransferConfig": "xdrec.strategies",
    "EvaluateConfig": "xdrec.evaluation",
    "RunConfig": "xdrec.pipeline",
    "Dataset": "xdrec.data.dataset",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'xdrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
