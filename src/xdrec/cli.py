"""The `xdrec` command line: each command parses, makes one library call, and renders.

Heavy libraries (torch, polars) are imported inside the commands so that `xdrec --help` is instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from xdrec.errors import XdrecError
from xdrec.workspace import WORKSPACE_ENV, Workspace


class _Group(TyperGroup):
    """Turns a user error from any command into one `error: ...` line on stderr and exit code 1.

    Tracebacks only with XDREC_DEBUG=1. Usage errors (bad options) keep Typer's rendering and exit 2.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XdrecError as e:
            if os.environ.get("XDREC_DEBUG") == "1":
                raise
            click.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    help="Cross-domain sequential recommendation: learn a user's taste where they have history (source) "
    "and carry it to where they have little or none (target).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
stderr = Console(stderr=True)

# --- options shared by several commands, defined once ---
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (same seed, same data: same result).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
DatasetOpt = Annotated[
    str | None, typer.Option(help="Prepared dataset (SOURCE+TARGET); default: the one `prepare` wrote last.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


@app.callback()
def _root(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option(
            envvar=WORKSPACE_ENV,
            help="Directory every stage reads from and writes to. [default: ./xdrec-workspace]",
        ),
    ] = None,
) -> None:
    ctx.obj = Workspace.at(workspace)


def _workspace(ctx: typer.Context) -> Workspace:
    return ctx.obj if isinstance(ctx.obj, Workspace) else Workspace.at()


def _print_json(obj: Any) -> None:
    console.print_json(json.dumps(obj, default=str))


@app.command()
def fetch(
    ctx: typer.Context,
    domains: Annotated[list[str], typer.Argument(help="Amazon 2023 categories, e.g. Books Movies_and_TV.")],
    source: Annotated[
        str | None,
        typer.Option(
            help="Import local files instead of the hub: a .jsonl/.jsonl.gz/.parquet/.csv file, "
            "a directory of <Domain>.<ext> files, or an http(s) URL."
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Drop malformed lines (counted) instead of failing.")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download (or import) raw reviews into raw/<Domain>.parquet: user, item, rating, timestamp."""
    from xdrec.data.amazon import fetch as fetch_domains

    results = fetch_domains(_workspace(ctx), domains, source, skip_bad=skip_bad, progress=not quiet)
    if as_json:
        _print_json([{k: getattr(r, k) for k in r.__dataclass_fields__} for r in results])
    else:
        from xdrec.views import fetch_table

        console.print(fetch_table(results))


@app.command()
def prepare(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Source domain (where users have history).")],
    target: Annotated[str, typer.Argument(help="Target domain (where recommendations are made).")],
    min_user: Annotated[
        int, typer.Option(help="Keep users with at least this many interactions (both domains together).")
    ] = 5,
    min_item: Annotated[int, typer.Option(help="Keep items with at least this many interactions.")] = 5,
    split: Annotated[
        str, typer.Option(help="loo (leave-one-out per user) or timestamp (global cuts).")
    ] = "loo",
    cold_start: Annotated[
        float,
        typer.Option(
            help="Fraction of users active in both domains whose whole "
            "target history is held out for cold-start testing."
        ),
    ] = 0.2,
    seed: SeedOpt = 42,
    one_pass: Annotated[
        bool, typer.Option(help="Filter once (the seed notebook) instead of to the k-core fixed point.")
    ] = False,
    t1: Annotated[int | None, typer.Option(help="timestamp split: validation starts (ms).")] = None,
    t2: Annotated[int | None, typer.Option(help="timestamp split: test starts (ms).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Filter, index and split two fetched domains into datasets/SOURCE+TARGET/."""
    from xdrec.data.prepare import PrepareConfig
    from xdrec.data.prepare import prepare as prepare_dataset

    cuts = {k: v for k, v in (("t1", t1), ("t2", t2)) if v is not None}
    config = PrepareConfig(
        min_user=min_user,
        min_item=min_item,
        split=split,
        cold_start=cold_start,  # type: ignore[arg-type]
        seed=seed,
        one_pass=one_pass,
        **cuts,
    )
    result = prepare_dataset(_workspace(ctx), source, target, config)
    if as_json:
        _print_json(result.manifest)
    else:
        from xdrec.views import prepare_table

        console.print(prepare_table(result.manifest))
        console.print(f"written to {result.path}")


@app.command()
def overlap(ctx: typer.Context, dataset: DatasetOpt = None, as_json: JsonOpt = False) -> None:
    """Users per domain, users active in both, their share, Jaccard and history lengths."""
    from xdrec.data.dataset import Dataset
    from xdrec.data.overlap import overlap_report

    report = overlap_report(Dataset.from_workspace(_workspace(ctx), dataset))
    if as_json:
        _print_json(report)
    else:
        from xdrec.views import overlap_table

        console.print(overlap_table(report))


def main() -> None:
    app()
