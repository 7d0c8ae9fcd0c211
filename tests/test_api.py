"""The library façade and the configuration contract the CLI maps onto."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from typing import get_args

import click
from typer.main import get_command

import xdrec
from xdrec import cli
from xdrec.cli import app
from xdrec.data.splits import SplitKind
from xdrec.models.losses import LOSSES
from xdrec.strategies import MappingLoss
from xdrec.training import LrScaling
from xdrec.tuning import Model


def test_the_facade_exports_every_stage_as_a_function() -> None:
    for name in ("fetch", "prepare", "pretrain", "embed", "transfer", "evaluate", "recommend", "run", "tune"):
        assert callable(getattr(xdrec, name)) and getattr(xdrec, name).__name__ == name
    from xdrec import EvaluateConfig, RunConfig, TransferConfig, Workspace  # noqa: F401


def test_importing_the_package_loads_neither_torch_nor_polars() -> None:
    code = "import sys, xdrec, xdrec.cli; print('torch' in sys.modules, 'polars' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_choices_are_the_librarys() -> None:
    assert get_args(cli.SplitName) == get_args(SplitKind)
    assert get_args(cli.LossName) == ("auto", *LOSSES)
    assert get_args(cli.LrScalingName) == get_args(LrScaling)
    assert get_args(cli.MappingLossName) == get_args(MappingLoss)
    assert get_args(cli.TuneModelName) == get_args(Model)


def test_cli_bag_defaults_are_the_librarys() -> None:
    from xdrec.strategies import BagConfig

    params = {p.name: p.default for p in get_command(app).commands["transfer"].params}  # type: ignore[attr-defined]
    assert {f: params[f"bag_{f}"] for f in asdict(BagConfig())} == asdict(BagConfig())


def _options(command: str) -> set[str]:
    params = get_command(app).commands[command].params  # type: ignore[attr-defined]
    return {p.name for p in params if isinstance(p, click.Option)}


def test_run_exposes_every_option_of_the_stages_it_runs() -> None:
    # Options that pick one stage's input or output, not a setting of the pipeline.
    per_stage = {"domain", "model", "dataset", "resume", "json", "quiet", "as_json"}
    stages = set().union(*(_options(c) for c in ("prepare", "pretrain", "transfer", "evaluate")))
    missing = stages - per_stage - _options("run")
    assert not missing, f"run lacks {sorted(missing)}"
