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
            help="Directory every stage reads from and writes to.",
            show_default="./xdrec-workspace",
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


EpochsOpt = Annotated[
    int, typer.Option(help="Maximum training epochs (early stopping on validation NDCG@10).")
]
BatchOpt = Annotated[int, typer.Option(help="Sequences per training batch.")]
LrOpt = Annotated[float, typer.Option(help="AdamW learning rate.")]
PatienceOpt = Annotated[
    int, typer.Option(help="Stop after this many epochs without a better validation metric.")
]
LossOpt = Annotated[
    str, typer.Option(help="auto (full softmax when it fits, else sampled), ce, bce or sampled.")
]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model (pays off on CUDA).")]


def _train_config(
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    loss: str,
    seed: int,
    device: str,
    compile_model: bool = False,
):
    from xdrec.training import TrainConfig

    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        loss=loss,
        seed=seed,
        device=device,
        compile=compile_model,
    )


@app.command()
def pretrain(
    ctx: typer.Context,
    domain: Annotated[
        str | None,
        typer.Option(
            help="Domain to train on; default the source. Give the target for the target-only baseline."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    epochs: EpochsOpt = 50,
    loss: LossOpt = "auto",
    batch_size: BatchOpt = 128,
    lr: LrOpt = 1e-3,
    patience: PatienceOpt = 5,
    seed: SeedOpt = 42,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last epoch.")] = False,
    compile_model: CompileOpt = False,
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train SASRec on one domain: models/source-only (default) or models/target-only."""
    from xdrec.pretrain import pretrain as train_sasrec

    config = _train_config(epochs, batch_size, lr, patience, loss, seed, device, compile_model)
    result = train_sasrec(
        _workspace(ctx),
        dataset=dataset,
        domain=domain,
        train_config=config,
        resume=resume,
        progress=not quiet and not as_json,
    )
    t = result.training
    summary = {
        "model": result.name,
        "domain": result.domain,
        "dataset": result.dataset,
        "path": str(result.model_dir),
        "loss": t.loss,
        "loss_reason": t.loss_reason,
        "epochs_run": t.epochs_run,
        "best_epoch": t.best_epoch,
        "valid_NDCG@10": t.best_metric,
        "seconds": round(t.seconds, 1),
        "device": t.device,
    }
    if as_json:
        _print_json(summary)
    else:
        console.print(
            f"[bold]{result.name}[/] on {result.domain}: loss {t.loss_reason}; best validation NDCG@10 "
            f"{t.best_metric or float('nan'):.4f} at epoch {t.best_epoch}/{t.epochs_run} "
            f"({t.seconds:.0f}s on {t.device}) -> {result.model_dir}"
        )


@app.command()
def embed(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Source model whose user vectors to compute.")] = "source-only",
    device: DeviceOpt = "auto",
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """User vectors from the source model: embeddings/<model>.safetensors + a raw-user-id index."""
    from xdrec.embed import embed as embed_users

    result = embed_users(_workspace(ctx), dataset=dataset, model=model, device=device)
    if as_json:
        _print_json({k: getattr(result, k) for k in result.__dataclass_fields__})
    else:
        console.print(
            f"{result.users:,} user vectors of dimension {result.dim} -> {result.path} "
            f"(index: {result.index})"
        )


@app.command()
def transfer(
    ctx: typer.Context,
    strategy: Annotated[
        list[str], typer.Option(help="mapping, finetune, fusion, joint or all (repeatable).")
    ] = ["all"],  # noqa: B006
    device: DeviceOpt = "auto",
    epochs: EpochsOpt = 50,
    loss: LossOpt = "auto",
    batch_size: BatchOpt = 128,
    lr: LrOpt = 1e-3,
    patience: PatienceOpt = 5,
    seed: SeedOpt = 42,
    mapping_loss: Annotated[
        str, typer.Option(help="mapping: task (likelihood of target items) or mse (EMCDR).")
    ] = "task",
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train transfer strategies from the source model into the target domain: models/<strategy>/."""
    from xdrec.transfer import TransferConfig
    from xdrec.transfer import transfer as train_strategies

    if mapping_loss not in ("task", "mse"):
        raise XdrecError(f"--mapping-loss must be task or mse, got {mapping_loss!r}")
    config = TransferConfig(
        train=_train_config(epochs, batch_size, lr, patience, loss, seed, device), mapping_loss=mapping_loss
    )  # type: ignore[arg-type]
    results = train_strategies(
        _workspace(ctx), strategy, dataset=dataset, config=config, progress=not quiet and not as_json
    )
    rows = [
        {
            "strategy": r.strategy,
            "path": str(r.model_dir),
            "serves": r.serves,
            "epochs_run": r.training.epochs_run,
            "valid": r.training.best_metric,
            "seconds": round(r.training.seconds, 1),
        }
        for r in results
    ]
    if as_json:
        _print_json(rows)
    else:
        for r in rows:
            console.print(
                f"[bold]{r['strategy']}[/]: validation {r['valid'] or float('nan'):.4f} after "
                f"{r['epochs_run']} epochs ({r['seconds']}s); serves {r['serves']} -> {r['path']}"
            )


@app.command()
def evaluate(
    ctx: typer.Context,
    k: Annotated[list[int], typer.Option(help="Cut-off(s) for HR/NDCG/Recall (repeatable).")] = [10],  # noqa: B006
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Models to evaluate (repeatable); default all "
            "trained for the domain. popularity is always shown."
        ),
    ] = None,
    domain: Annotated[str | None, typer.Option(help="Domain to evaluate; default the target.")] = None,
    negatives: Annotated[
        int | None,
        typer.Option(
            help="Papers' sampled protocol: rank among N sampled "
            "negatives (labelled SAMPLED; never mixed with full)."
        ),
    ] = None,
    keep_seen: Annotated[bool, typer.Option(help="Do not mask the user's own history items.")] = False,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs (0: none).")] = 1000,
    seed: SeedOpt = 42,
    device: DeviceOpt = "auto",
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Full-ranking HR@K, NDCG@K, MRR, Recall@K per model and user segment, with 95% CIs."""
    from xdrec.pipeline import evaluate as evaluate_models
    from xdrec.report import render_table, report_to_json

    report, paths = evaluate_models(
        _workspace(ctx),
        dataset=dataset,
        models=model or (),
        domain=domain,
        ks=k,
        negatives=negatives,
        keep_seen=keep_seen,
        seed=seed,
        bootstrap=bootstrap,
        device=device,
    )
    if as_json:
        _print_json(report_to_json(report))
    else:
        console.print(render_table(report))
        console.print(f"saved {paths['json']} and {paths['plot']}", soft_wrap=True)


@app.command()
def recommend(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="Raw user id (e.g. an Amazon reviewer id).")],
    k: Annotated[int, typer.Option(help="How many items.")] = 10,
    strategy: Annotated[
        str | None,
        typer.Option(help="Model to use; default the best for the user's segment in the last report."),
    ] = None,
    device: DeviceOpt = "auto",
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-K target items for one user, excluding items they already have."""
    from xdrec.pipeline import recommend as recommend_items

    rec = recommend_items(_workspace(ctx), user_id, k=k, strategy=strategy, dataset=dataset, device=device)
    if as_json:
        _print_json({"user": rec.user, "segment": rec.segment, "model": rec.model, "items": rec.items})
    else:
        from xdrec.views import recommend_table

        console.print(recommend_table(rec))


@app.command()
def run(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Source domain.")],
    target: Annotated[str, typer.Argument(help="Target domain.")],
    from_source: Annotated[
        str | None,
        typer.Option(
            "--source", help="Passed to fetch: local files, a directory or a URL instead of the hub."
        ),
    ] = None,
    min_user: Annotated[int, typer.Option(help="prepare: minimum interactions per user.")] = 5,
    min_item: Annotated[int, typer.Option(help="prepare: minimum interactions per item.")] = 5,
    split: Annotated[str, typer.Option(help="prepare: loo or timestamp.")] = "loo",
    cold_start: Annotated[float, typer.Option(help="prepare: cold-start hold-out fraction.")] = 0.2,
    strategy: Annotated[list[str], typer.Option(help="Transfer strategies (repeatable) or all.")] = ["all"],  # noqa: B006
    k: Annotated[list[int], typer.Option(help="Cut-off(s) (repeatable).")] = [10],  # noqa: B006
    negatives: Annotated[
        int | None, typer.Option(help="Also the papers' sampled protocol with N negatives (a second table).")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs (0: none).")] = 1000,
    mapping_loss: Annotated[str, typer.Option(help="mapping: task or mse (EMCDR).")] = "task",
    device: DeviceOpt = "auto",
    epochs: EpochsOpt = 50,
    batch_size: BatchOpt = 128,
    lr: LrOpt = 1e-3,
    patience: PatienceOpt = 5,
    seed: SeedOpt = 42,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """fetch, prepare, overlap, pretrain, embed, transfer and evaluate in one go (unchanged stages reused)."""
    from xdrec.data.prepare import PrepareConfig
    from xdrec.pipeline import RunConfig
    from xdrec.pipeline import run as run_pipeline
    from xdrec.report import render_table, report_to_json
    from xdrec.transfer import parse_strategies

    config = RunConfig(
        prepare=PrepareConfig(
            min_user=min_user, min_item=min_item, split=split, cold_start=cold_start, seed=seed
        ),  # type: ignore[arg-type]
        train=_train_config(epochs, batch_size, lr, patience, "auto", seed, device),
        strategies=tuple(parse_strategies(strategy)),
        ks=tuple(k),
        negatives=negatives,
        bootstrap=bootstrap,
        mapping_loss=mapping_loss,
    )
    reports = run_pipeline(
        _workspace(ctx),
        source,
        target,
        config,
        fetch_source=from_source,
        progress=not quiet and not as_json,
        log=_stage_log(as_json),
    )
    if as_json:  # the full-ranking report; the sampled one, when asked for, under "sampled"
        full, *sampled = (report_to_json(r) for r in reports)
        _print_json(full | ({"sampled": sampled[0]} if sampled else {}))
    else:
        for report in reports:
            console.print(render_table(report))


def _stage_log(quiet: bool):
    """Stage lines of run/demo go to stderr, so stdout stays the table or the JSON."""
    return (
        (lambda _: None)
        if quiet
        else (lambda line: stderr.print(f"[dim]›[/] {line}", highlight=False, soft_wrap=True))
    )


@app.command()
def demo(
    ctx: typer.Context,
    users: Annotated[int, typer.Option(help="Synthetic users to generate.")] = 3000,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per model.")] = 10,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The whole pipeline on the embedded SYNTHETIC two-domain data (about two minutes on 2 CPU cores).

    Runs in --workspace if given, else in a new temporary directory.
    """
    from dataclasses import replace

    from xdrec.data.synthetic import SyntheticConfig
    from xdrec.pipeline import DEMO_TRAIN
    from xdrec.pipeline import demo as run_demo
    from xdrec.report import render_table, report_to_json

    explicit = ctx.parent is not None and ctx.parent.params.get("workspace") is not None
    workspace, report = run_demo(
        _workspace(ctx) if explicit else None,
        synthetic=SyntheticConfig(n_users=users),
        train=replace(DEMO_TRAIN, epochs=epochs, device=device),
        progress=not quiet and not as_json,
        log=_stage_log(as_json),
    )
    if as_json:
        _print_json(report_to_json(report) | {"workspace": str(workspace.root)})
    else:
        console.print(render_table(report))
        console.print(f"workspace: {workspace.root}  (try: xdrec --workspace {workspace.root} overlap)")


def main() -> None:
    # Idle OpenMP workers spin by default; on a busy machine (or one with few cores) that makes torch
    # several times slower than one thread. Set before torch is imported (the commands import it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()
