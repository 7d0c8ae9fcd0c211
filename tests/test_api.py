"""The library façade and the configuration contract the CLI maps onto."""

from __future__ import annotations

import subprocess
import sys

import click
from typer.main import get_command

import xdrec
from xdrec.cli import app


def test_the_facade_exports_every_stage_as_a_function() -> None:
    for name in ("fetch", "prepare", "pretrain", "embed", "transfer", "evaluate", "recommend", "run", "tune"):
        assert callable(getattr(xdrec, name)) and getattr(xdrec, name).__name__ == name
    from xdrec import EvaluateConfig, RunConfig, TransferConfig, Workspace  # noqa: F401


def test_importing_the_package_loads_neither_torch_nor_polars() -> None:
    code = "import sys, xdrec, xdrec.cli; print('torch' in sys.modules, 'polars' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_strategy_options_are_the_declared_ones() -> None:
    from xdrec.strategies import declared_options

    params = {p.name: p.default for p in get_command(app).commands["run"].params}  # type: ignore[attr-defined]
    declared = declared_options()
    assert {"mapping_loss", "bag_dim", "bag_members"} <= {o.dest for o in declared}
    assert {o.dest: params[o.dest] for o in declared} == {o.dest: o.default for o in declared}


def _options(command: str) -> set[str]:
    params = get_command(app).commands[command].params  # type: ignore[attr-defined]
    return {p.name for p in params if isinstance(p, click.Option)}


def test_run_exposes_every_option_of_the_stages_it_runs() -> None:
    # Options that pick one stage's input or output, not a setting of the pipeline.
    per_stage = {"domain", "model", "dataset", "resume", "json", "quiet", "as_json"}
    stages = set().union(*(_options(c) for c in ("prepare", "pretrain", "transfer", "evaluate")))
    missing = stages - per_stage - _options("run")
    assert not missing, f"run lacks {sorted(missing)}"
