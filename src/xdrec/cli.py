"""The `xdrec` command line: each command parses, makes one library call, and renders.

Heavy libraries (torch, polars) are imported inside the commands so that `xdrec --help` is instant.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import click
import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from xdrec.errors import OptionError, explain
from xdrec.workspace import AREAS, WORKSPACE_ENV, Area, Workspace

# What each command writes (it holds those areas' write locks while it runs). A command in neither table
# holds every area's lock: a new command is safe before it is listed here.
_READS_ONLY = ("overlap", "recommend", "status", "users")
_WRITES: dict[str, tuple[Area, ...]] = {
    "fetch": ("raw",),
    "prepare": ("datasets",),
    "pretrain": ("models",),
    "embed": ("embeddings",),
    "transfer": ("models",),
    "evaluate": ("reports",),
    "tune": ("tuning",),
    "run": AREAS,
    "demo": AREAS,
}


class _Group(TyperGroup):
    """The error boundary: every expected failure of any command becomes one `error: ...` line on stderr.

    Exit code 1 for a failure, 2 for a usage error (bad or missing option); a traceback only with
    XDREC_DEBUG=1. Writing commands hold their areas' write locks (see workspace.py) while they run.
    """

    def main(self, args: Any = None, *rest: Any, standalone_mode: bool = True, **extra: Any) -> Any:
        args = _workspace_first(list(sys.argv[1:] if args is None else args))
        if args[:2] == ["--workspace", ""] or args[:1] == ["--workspace="]:  # Path("") would be "."
            click.echo("error: --workspace is empty: pass a folder", err=True)
            sys.exit(2)
        if not standalone_mode:
            return super().main(args, *rest, standalone_mode=False, **extra)
        try:
            code = super().main(args, *rest, standalone_mode=False, **extra)
        except typer.TyperException as e:  # Typer's (vendored) click exceptions: usage errors and the like
            context = getattr(e, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            click.echo(f"error: {e.format_message()}{hint}", err=True)  # type: ignore[attr-defined]
            sys.exit(getattr(e, "exit_code", 1))
        except typer.Abort:
            code = 130
        if code == 130:  # Typer turns a Ctrl-C anywhere in parsing or a command into Exit(130), silently
            _say_interrupted()
        sys.exit(code if isinstance(code, int) else 0)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        areas = () if cmd_name in _READS_ONLY else _WRITES.get(cmd_name, AREAS)
        if command is not None and not hasattr(command, "_xdrec_locked"):
            # Wrapping invoke, not the callback: it runs after the options are parsed (--help takes none).
            command.invoke = _holding_locks(command.invoke, cmd_name, areas)  # type: ignore[method-assign]
            command._xdrec_locked = True  # type: ignore[attr-defined]
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort, BrokenPipeError):
            raise  # usage errors are worded in main; a closed pipe (`| head`) ends quietly in Typer
        except Exception as e:
            message = explain(e, Workspace.at(ctx.params.get("workspace")))
            if message is None or os.environ.get("XDREC_DEBUG") == "1":
                raise
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
                click.echo(f"error: {message}", err=True)
            raise typer.Exit(2 if isinstance(e, OptionError) else 1) from None


_RESUME_HINT = (
    "finished stages are kept; rerun the command to redo the interrupted one "
    "(`--resume` continues pretrain or transfer from the last finished epoch)"
)


def _say_interrupted() -> None:
    """Ctrl-C (exit 130): what was kept and how to go on, once, wherever it struck."""
    click.echo(f"error: interrupted; {_RESUME_HINT}", err=True)


def _holding_locks(invoke: Any, name: str, areas: tuple[Area, ...]) -> Any:
    """A command's `invoke` run with the write locks of `areas` held."""

    @functools.wraps(invoke)
    def run(ctx: click.Context) -> Any:
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 holds the locks and alone writes
            return invoke(ctx)
        workspace = _demo_workspace(ctx) if name == "demo" else _workspace(ctx)
        with workspace.writing(areas, name):
            return invoke(ctx)

    return run


def _workspace_first(args: list[str]) -> list[str]:
    """Move `--workspace DIR` given after the subcommand to before it, so it is accepted in both places."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if i > 0 and arg == "--workspace" and i + 1 < len(args):
            return [arg, args[i + 1], *args[:i], *args[i + 2 :]]
        if i > 0 and arg.startswith("--workspace="):
            return [arg, *args[:i], *args[i + 1 :]]
    return args


# Where a command's generated strategy options wait (ctx.meta) between parsing and the command body.
_STRATEGY_OPTIONS = "xdrec.strategy_options"
# Options whose choices the library owns (a Literal beside the code that reads them), by parameter name:
# their info (help, flags) here, their choices read when the command is parsed or shows its help.
_CHOICES: dict[str, tuple[Any, Callable[[], tuple[str, ...]]]] = {}


def _choices(info: Any, values: Callable[[], tuple[str, ...]], name: str) -> Any:
    """An option or argument whose choices are `values()`, read from the library only when needed."""
    _CHOICES[name] = (info, values)
    return info


def _declared_command(strategy_options: bool = False, choices: tuple[str, ...] = ()) -> type:
    """The class of a command whose options the registries declare: every strategy's own options
    (--<strategy>-<field>, after --strategy) with `strategy_options`, and the `choices` parameters'
    choices. They are built by Typer from the declarations when the command is parsed or shows its help,
    not when the app is: the registries import torch, and `xdrec --help` stays instant."""

    class Declared(TyperCommand):
        @property  # type: ignore[override]
        def params(self) -> list[click.Parameter]:
            if not self._complete:
                self._complete = True
                self._params = _with_declared(self._params, strategy_options, choices)
            return self._params

        @params.setter
        def params(self, value: list[click.Parameter]) -> None:
            self._params, self._complete = value, False

        def invoke(self, ctx: click.Context) -> Any:
            # The strategies' options are not parameters of the command's function: they wait in ctx.meta.
            names = {o.dest for o in _strategy_declarations()} if strategy_options else set()
            ctx.meta[_STRATEGY_OPTIONS] = {n: ctx.params.pop(n) for n in names if n in ctx.params}
            return super().invoke(ctx)

    return Declared


def _strategy_declarations() -> list[Any]:
    from xdrec.strategies import declared_options

    return declared_options()


def _with_declared(
    params: list[click.Parameter], strategy_options: bool, choices: tuple[str, ...]
) -> list[click.Parameter]:
    """`params` with the choices of `choices` filled in and the strategies' options after --strategy."""
    kw = inspect.Parameter.KEYWORD_ONLY
    built = []
    for name in choices:
        info, values = _CHOICES[name]
        default = next(p.default for p in params if p.name == name)
        built.append(
            inspect.Parameter(name, kw, default=default, annotation=Annotated[Literal[values()], info])
        )
    own = []
    for o in _strategy_declarations() if strategy_options else []:
        flag = f"{o.flag}/--no-{o.flag[2:]}" if isinstance(o.default, bool) else o.flag
        low = o.spec.low if type(o.default) is int else None  # a float's range is the options' own check
        if o.spec.choices:
            kind: Any = Literal[o.spec.choices]
        else:
            kind = type(o.default)
        option = typer.Option(flag, help=o.spec.help, min=low)
        own.append(inspect.Parameter(o.dest, kw, default=o.default, annotation=Annotated[kind, option]))
    made = {p.name: p for p in _typer_params([*built, *own])}
    result = [made.get(p.name, p) for p in params]  # type: ignore[arg-type]
    if own:
        at = next(i for i, p in enumerate(result) if p.name == "strategy") + 1
        result[at:at] = [made[p.name] for p in own]
    return result


def _typer_params(signature: list[inspect.Parameter]) -> list[click.Parameter]:
    """The click parameters Typer makes for a function with this signature."""

    def declared(**_: Any) -> None: ...

    declared.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    holder = typer.Typer()
    holder.command()(declared)
    holder.command("unused")(lambda: None)  # two commands: a group, so its commands are reachable by name
    return typer.main.get_command(holder).commands["declared"].params  # type: ignore[attr-defined]


def _version(value: bool) -> None:
    if value:
        import xdrec

        click.echo(f"xdrec {xdrec.__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=_Group,
    help="Cross-domain sequential recommendation: learn a user's taste where they have history (source) "
    "and carry it to where they have little or none (target).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Ids, item names and paths are data: never read as rich markup (a user id `[red]` or `[/]`).
console = Console(markup=False)
stderr = Console(stderr=True, markup=False)

# --- options shared by several commands, defined once ---
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (same seed, same data: same result).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
DatasetOpt = Annotated[
    str | None, typer.Option(help="Prepared dataset (SOURCE+TARGET); default: the one `prepare` wrote last.")
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Fail when a model the pipeline trains is missing or stale.")
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Only the results: no progress bars or training lines (warnings still show)."
    ),
]
# prepare and embed answer no question (their files are the result): their -q prints nothing on success.
SilentOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")]


@app.callback()
def _root(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option(
            envvar=WORKSPACE_ENV,
            help="Directory every stage reads from and writes to (also accepted after the command).",
            show_default="./xdrec-workspace",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    ctx.obj = Workspace.at(workspace)
    if not console.is_terminal:  # a file or a pipe: full-width lines, never cut to 80 columns
        console.width = 100_000


def _demo_workspace(ctx: click.Context) -> Workspace:
    """--workspace if given, else one fixed folder in the system's temporary folder (reused, not piled up)."""
    if ctx.find_root().params.get("workspace") is not None:
        return _workspace(ctx)
    return Workspace.demo()


def _workspace(ctx: typer.Context) -> Workspace:
    return ctx.obj if isinstance(ctx.obj, Workspace) else Workspace.at()


def _print_json(obj: Any) -> None:
    console.print_json(json.dumps(obj, default=str))


def _world_size() -> dict[str, int]:
    """What --json adds under torchrun with N > 1 processes (rank 0 prints): {"world_size": N}."""
    from xdrec.distributed import launched

    world = launched().world_size
    return {"world_size": world} if world > 1 else {}


def _given(ctx: typer.Context) -> frozenset[str]:
    """The options the user set (command line or environment): they win over `xdrec tune`'s settings."""
    # By name: the context's ParameterSource may be another click's (Typer can carry its own).
    unset = ("DEFAULT", "DEFAULT_MAP")
    names = [*ctx.params, *ctx.meta.get(_STRATEGY_OPTIONS, {})]
    return frozenset(
        name for name in names if getattr(ctx.get_parameter_source(name), "name", "") not in unset
    )


def _strategy_options(ctx: typer.Context) -> tuple[Any, ...]:
    """Each strategy's options as given by the command line's --<strategy>-<field> options."""
    from xdrec.strategies import strategy_options

    return strategy_options(ctx.meta.get(_STRATEGY_OPTIONS, {}))


def _tuned(tuned: Any) -> dict | None:
    """The stored tune settings a model was trained with, for --json (None: none)."""
    return None if tuned is None else {"trial": tuned.trial, "valid": tuned.value, "params": tuned.params}


def _tuned_note(tuned: Any) -> str:
    return "" if tuned is None else f"; tuned settings (trial {tuned.trial})"


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


# --- prepare's options (also run's) ---


def _split_kinds() -> tuple[str, ...]:
    from xdrec.data.splits import SplitKind

    return get_args(SplitKind)


MinUserOpt = Annotated[
    int, typer.Option(help="Keep users with at least this many interactions (both domains together).")
]
MinItemOpt = Annotated[int, typer.Option(help="Keep items with at least this many interactions.")]
SplitOpt = Annotated[
    str,
    _choices(
        typer.Option(
            help="loo (leave-one-out per user and domain), timestamp (global cuts) or mixed (the papers': "
            "leave-one-out on each user's merged two-domain timeline, users of both domains only; "
            "same-time ties source first)."
        ),
        _split_kinds,
        "split",
    ),
]
ColdStartOpt = Annotated[
    float,
    typer.Option(
        help="Fraction of users active in both domains whose whole target history is held out for "
        "cold-start testing (under mixed: their source history is all training; the papers use 0)."
    ),
]
MinPerDomainOpt = Annotated[
    int,
    typer.Option(
        help="Keep only users with at least this many interactions in each domain (0: no such filter; "
        "mixed implies 1)."
    ),
]
OnePassOpt = Annotated[
    bool, typer.Option(help="Filter once (the seed notebook) instead of to the k-core fixed point.")
]
T1Opt = Annotated[int | None, typer.Option(help="timestamp split: validation starts (ms).")]
T2Opt = Annotated[int | None, typer.Option(help="timestamp split: test starts (ms).")]


def _prepare_config(
    min_user: int,
    min_item: int,
    split: str,
    cold_start: float,
    seed: int,
    one_pass: bool,
    t1: int | None,
    t2: int | None,
    min_per_domain: int,
):
    from xdrec.data.prepare import PrepareConfig

    if split != "timestamp" and (t1 is not None or t2 is not None):
        raise typer.BadParameter(f"they apply to --split timestamp only, not {split}", param_hint="--t1/--t2")
    cuts = {k: v for k, v in (("t1", t1), ("t2", t2)) if v is not None}
    return PrepareConfig(
        min_user=min_user,
        min_item=min_item,
        split=split,  # type: ignore[arg-type]
        cold_start=cold_start,
        seed=seed,
        one_pass=one_pass,
        min_per_domain=min_per_domain,
        **cuts,
    )


@app.command(cls=_declared_command(choices=("split",)))
def prepare(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Source domain (where users have history).")],
    target: Annotated[str, typer.Argument(help="Target domain (where recommendations are made).")],
    min_user: MinUserOpt = 5,
    min_item: MinItemOpt = 5,
    split: SplitOpt = "loo",
    cold_start: ColdStartOpt = 0.2,
    min_per_domain: MinPerDomainOpt = 0,
    seed: SeedOpt = 42,
    one_pass: OnePassOpt = False,
    t1: T1Opt = None,
    t2: T2Opt = None,
    as_json: JsonOpt = False,
    quiet: SilentOpt = False,
) -> None:
    """Filter, index and split two fetched domains into datasets/SOURCE+TARGET/."""
    from xdrec.data.prepare import prepare as prepare_dataset

    config = _prepare_config(min_user, min_item, split, cold_start, seed, one_pass, t1, t2, min_per_domain)
    result = prepare_dataset(_workspace(ctx), source, target, config)
    for note in result.notes:
        stderr.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)
    _warn(result.manifest)
    if as_json:
        _print_json(result.manifest)
    elif not quiet:
        from xdrec.views import prepare_table

        console.print(prepare_table(result.manifest))
        console.print(f"written to {result.path}")


@app.command()
def overlap(
    ctx: typer.Context,
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,  # the table is the result: accepted so that scripts can pass -q everywhere
) -> None:
    """Users per domain, users active in both, their share, Jaccard and history lengths."""
    from xdrec.data.dataset import Dataset
    from xdrec.data.overlap import overlap_report

    report = overlap_report(Dataset.from_workspace(_workspace(ctx), dataset))
    _warn(report)
    if as_json:
        _print_json(report)
    else:
        from xdrec.views import overlap_table

        console.print(overlap_table(report))


# --- training options (pretrain, transfer, run) ---


def _losses() -> tuple[str, ...]:
    from xdrec.models.losses import LOSSES

    return ("auto", *LOSSES)


def _lr_scalings() -> tuple[str, ...]:
    from xdrec.training import LrScaling

    return get_args(LrScaling)


EpochsOpt = Annotated[
    int, typer.Option(min=1, help="Maximum training epochs (early stopping on validation NDCG@10).")
]
BatchOpt = Annotated[int, typer.Option(min=1, help="Sequences per training batch.")]
LrOpt = Annotated[float, typer.Option(help="AdamW learning rate.")]
WeightDecayOpt = Annotated[float, typer.Option(help="AdamW weight decay.")]
PatienceOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Stop after this many epochs without a better validation metric "
        "(never before twice this many epochs: slow starters get a chance).",
    ),
]
LossOpt = Annotated[
    str,
    _choices(
        typer.Option(help="auto (full softmax when it fits, else sampled), ce, bce or sampled."),
        _losses,
        "loss",
    ),
]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model (pays off on CUDA).")]
LrScalingOpt = Annotated[
    str,
    _choices(
        typer.Option(
            help="Scale --lr for large batches: lr x (global batch / 128) ** 1/2 (sqrt) or ** 1 (linear); "
            "the global batch is --batch-size x the torchrun processes. none: --lr as given."
        ),
        _lr_scalings,
        "lr_scaling",
    ),
]
InBatchOpt = Annotated[
    bool,
    typer.Option(
        help="sampled loss: the batch's other labels are negatives too, beside the shared popularity "
        "ones (logQ-corrected; costs a (positions x positions) score matrix per batch). Ignored by ce "
        "and bce."
    ),
]
RefitOpt = Annotated[
    bool,
    typer.Option(
        "--refit/--no-refit",
        help="Once validation has chosen a model's epochs, train it again for as many with the validation "
        "items as labels too, and keep that one (the SASRecs, finetune, fusion and joint; about twice "
        "their time).",
    ),
]


def _train_config(
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    loss: str,
    seed: int,
    device: str,
    lr_scaling: str = "none",
    in_batch: bool = True,
    compile_model: bool = False,
    refit: bool = True,
):
    from xdrec.training import TrainConfig

    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        loss=loss,
        seed=seed,
        device=device,
        lr_scaling=lr_scaling,  # type: ignore[arg-type]
        in_batch=in_batch,
        compile=compile_model,
        refit=refit,
    )


# --- model options (pretrain, transfer, run): unset keeps the default / the source model's value ---
HiddenOpt = Annotated[int | None, typer.Option(help="Hidden size D.", show_default="64")]
BlocksOpt = Annotated[int | None, typer.Option(help="Transformer blocks.", show_default="2")]
HeadsOpt = Annotated[int | None, typer.Option(help="Attention heads (must divide D).", show_default="2")]
DropoutOpt = Annotated[float | None, typer.Option(help="Dropout rate.", show_default="0.2")]
MaxLenOpt = Annotated[int | None, typer.Option(help="Most recent items a model reads.", show_default="50")]


def _model_options(
    hidden: int | None, blocks: int | None, heads: int | None, dropout: float | None, max_len: int | None
):
    from xdrec.model_options import ModelOptions

    return ModelOptions(hidden=hidden, blocks=blocks, heads=heads, dropout=dropout, max_len=max_len)


@app.command(cls=_declared_command(choices=("loss", "lr_scaling")))
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
    weight_decay: WeightDecayOpt = 0.0,
    patience: PatienceOpt = 5,
    lr_scaling: LrScalingOpt = "none",
    in_batch: InBatchOpt = True,
    refit: RefitOpt = True,
    hidden: HiddenOpt = None,
    blocks: BlocksOpt = None,
    heads: HeadsOpt = None,
    dropout: DropoutOpt = None,
    max_len: MaxLenOpt = None,
    seed: SeedOpt = 42,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last epoch.")] = False,
    compile_model: CompileOpt = False,
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train SASRec on one domain: models/source-only (default) or models/target-only."""
    from xdrec.fit import refit_note
    from xdrec.models import default_config
    from xdrec.pretraining import pretrain as train_sasrec

    config = _train_config(
        epochs,
        batch_size,
        lr,
        weight_decay,
        patience,
        loss,
        seed,
        device,
        lr_scaling,
        in_batch,
        compile_model,
        refit,
    )
    model = _model_options(hidden, blocks, heads, dropout, max_len).apply(default_config())
    result = train_sasrec(
        _workspace(ctx),
        dataset=dataset,
        domain=domain,
        model=model,
        train_config=config,
        resume=resume,
        progress=not quiet and not as_json,
        tuned=True,
        keep=_given(ctx),
    )
    t = result.training
    summary = {
        "model": result.name,
        "domain": result.domain,
        "dataset": result.dataset,
        "path": str(result.model_dir),
        "loss": t.loss,
        "loss_reason": t.loss_reason,
        "lr": t.lr,
        "epochs_run": t.epochs_run,
        "best_epoch": t.best_epoch,
        "valid_NDCG@10": t.best_metric,
        "seconds": round(t.seconds, 1),
        "device": t.device,
        "world_size": t.world_size,
        "tuned": _tuned(result.tuned),
        "refit": result.refit,
    }
    if as_json:
        _print_json(summary)
    else:
        console.print(
            f"{result.name} on {result.domain}: best validation NDCG@10 "
            f"{t.best_metric or float('nan'):.4f} at epoch {t.best_epoch}/{t.epochs_run} "
            f"({t.seconds:.0f}s on {t.device}{_tuned_note(result.tuned)}) -> {result.model_dir}"
        )
        if result.refit is not None:
            console.print(f"  {refit_note(result.refit)}", highlight=False)


@app.command()
def embed(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Source model whose user vectors to compute.")] = "source-only",
    device: DeviceOpt = "auto",
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: SilentOpt = False,
) -> None:
    """User vectors from the source model: embeddings/<model>.safetensors + a raw-user-id index."""
    from xdrec.embedding import embed as embed_users

    result = embed_users(
        _workspace(ctx), dataset=dataset, model=model, device=device, progress=not quiet and not as_json
    )
    if as_json:
        _print_json({k: getattr(result, k) for k in result.__dataclass_fields__})
    elif not quiet:
        console.print(
            f"{result.users:,} user vectors of dimension {result.dim} -> {result.path} "
            f"(index: {result.index})"
        )


# --- transfer's options (also run's) ---
StrategyOpt = Annotated[
    list[str],
    typer.Option(
        help="Strategies (repeatable): default (mapping, finetune, bag; and joint on a mixed-split "
        "dataset), all, or names."
    ),
]
# Each strategy's own options (--mapping-loss, --bag-dim, ...) are declared in its module and added to
# `transfer` and `run` by `_declared_command`.


@app.command(cls=_declared_command(strategy_options=True, choices=("loss", "lr_scaling")))
def transfer(
    ctx: typer.Context,
    strategy: StrategyOpt = ["default"],  # noqa: B006
    device: DeviceOpt = "auto",
    epochs: EpochsOpt = 50,
    loss: LossOpt = "auto",
    batch_size: BatchOpt = 128,
    lr: LrOpt = 1e-3,
    weight_decay: WeightDecayOpt = 0.0,
    patience: PatienceOpt = 5,
    lr_scaling: LrScalingOpt = "none",
    in_batch: InBatchOpt = True,
    refit: RefitOpt = True,
    hidden: HiddenOpt = None,
    blocks: BlocksOpt = None,
    heads: HeadsOpt = None,
    dropout: DropoutOpt = None,
    max_len: MaxLenOpt = None,
    seed: SeedOpt = 42,
    compile_model: CompileOpt = False,
    domain: Annotated[
        str | None,
        typer.Option(
            help="Domain to transfer into; default the target. The source trains the reverse direction "
            "(from target-only and `embed --model target-only`) into models/<strategy>-reverse/."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue each strategy's interrupted run from its last epoch.")
    ] = False,
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train transfer strategies from the source model into the target domain: models/<strategy>/.

    Model options left unset keep the source model's architecture.
    """
    from xdrec.strategies import TransferConfig
    from xdrec.strategies import transfer as train_strategies
    from xdrec.strategies.fallback import FALLS_BACK

    config = TransferConfig(
        train=_train_config(
            epochs,
            batch_size,
            lr,
            weight_decay,
            patience,
            loss,
            seed,
            device,
            lr_scaling,
            in_batch,
            compile_model,
            refit,
        ),
        model=_model_options(hidden, blocks, heads, dropout, max_len),
        strategy_options=_strategy_options(ctx),
    )
    results = train_strategies(
        _workspace(ctx),
        strategy,
        dataset=dataset,
        config=config,
        target=domain,
        resume=resume,
        progress=not quiet and not as_json,
        tuned=True,
        keep=_given(ctx),
    )
    rows = [
        {
            "strategy": r.strategy,
            "path": str(r.model_dir),
            "serves": [s for s in ("warm", "cold", "target-only") if s in r.serves],
            "epochs_run": r.training.epochs_run,
            "valid": r.training.best_metric,
            "seconds": round(r.training.seconds, 1),
            "world_size": r.training.world_size,
            "tuned": _tuned(r.tuned),
            "falls_back": r.falls_back,
            "blend_weights": r.blend_weights,
            "refit": r.refit,
        }
        for r in results
    ]
    if as_json:
        _print_json(rows)
    else:
        for r, result in zip(rows, results, strict=True):
            console.print(
                f"{r['strategy']}: validation {r['valid'] or float('nan'):.4f} after "
                f"{r['epochs_run']} epochs ({r['seconds']}s{_tuned_note(result.tuned)}); "
                f"serves {', '.join(r['serves'])} -> {r['path']}"
            )
            if result.falls_back:
                console.print(f"  {FALLS_BACK}")
            for note in result.notes():
                console.print(f"  {note}")


# --- evaluate's options (also run's) ---
KOpt = Annotated[list[int], typer.Option(help="Cut-off(s) for HR/NDCG/Recall (repeatable).")]
NegativesOpt = Annotated[
    int | None,
    typer.Option(
        help="Also the papers' sampled protocol: rank among N sampled "
        "negatives (labelled SAMPLED; never mixed with full)."
    ),
]
KeepSeenOpt = Annotated[bool, typer.Option(help="Do not mask the user's own history items.")]
BootstrapOpt = Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs (0: none).")]
ByHistoryOpt = Annotated[
    bool,
    typer.Option(
        help="Also the warm users by how many items of the domain their history holds "
        "(warm 1-2, 3-4, 5-7, 8+): where the transfer helps."
    ),
]


def _evaluate_config(
    ks: list[int],
    negatives: int | None,
    keep_seen: bool,
    seed: int,
    bootstrap: int,
    device: str,
    by_history: bool = False,
):
    from xdrec.evaluation import EvaluateConfig

    return EvaluateConfig(
        ks=tuple(ks),
        negatives=negatives,
        keep_seen=keep_seen,
        seed=seed,
        bootstrap=bootstrap,
        device=device,
        by_history=by_history,
    )


@app.command()
def evaluate(
    ctx: typer.Context,
    k: KOpt = [10],  # noqa: B006
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Models to evaluate (repeatable); default all "
            "trained for the domain. popularity is always shown."
        ),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(help="Domain to evaluate; default the target, both domains under the mixed split."),
    ] = None,
    both_domains: Annotated[
        bool, typer.Option(help="Evaluate both domains (any split): the source domain's rows too.")
    ] = False,
    negatives: NegativesOpt = None,
    keep_seen: KeepSeenOpt = False,
    by_history: ByHistoryOpt = False,
    bootstrap: BootstrapOpt = 1000,
    seed: SeedOpt = 42,
    device: DeviceOpt = "auto",
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Full-ranking HR@K, NDCG@K, MRR, Recall@K per model and user segment, with 95% CIs.

    With --negatives N, the sampled protocol instead (for comparison with papers only). Ranks: ties count
    against the model (rank = 1 + candidates scoring >= the relevant item; ABXI counts only strictly
    higher scores: the same for real-valued scores, see BENCHMARKS.md). Under the mixed split each user
    is tested once, in the domain of their last interaction: both domains are reported, each model in
    the domain it scores; a domain with no test user says so.

    Paired with target-only (cold users: popularity) on the same users: ▲ / ▼ = a significant gain / loss.

    Under `torchrun --nproc-per-node N -m xdrec evaluate ...` each process ranks its share of the users;
    the first prints and writes the report (--json then adds "world_size": N).
    """
    from xdrec.pipeline import evaluate_domains
    from xdrec.report import reports_to_json

    config = _evaluate_config(k, negatives, keep_seen, seed, bootstrap, device, by_history)
    results = evaluate_domains(
        _workspace(ctx),
        config,
        dataset=dataset,
        models=model or (),
        domain=domain,
        both_domains=both_domains,
        strict=strict,
        progress=not quiet and not as_json,
    )
    if as_json:
        _print_json(reports_to_json([report for report, _ in results]) | _world_size())
    else:
        _print_reports(results)


def _print_reports(results: list[tuple[Any, dict[str, Path]]]) -> None:
    """Each report's table, then what answers the question (one verdict line per segment), then where
    the files went."""
    from xdrec.report import render_table, verdict_lines
    from xdrec.views import absent_lines

    for report, _ in results:
        console.print(render_table(report, plain=not console.is_terminal))
        for line in absent_lines(report.absent, "not shown"):
            console.print(line, soft_wrap=True, highlight=False)
    console.print()
    for line in verdict_lines([report for report, _ in results]):
        console.print(line, soft_wrap=True, highlight=False)
    for _, paths in results:
        if "kept" in paths:
            console.print(
                f"not saved: {paths['kept']} has 95% CIs and this report (--bootstrap 0) has none; "
                "pass --bootstrap N to replace it",
                soft_wrap=True,
            )
        else:
            console.print(f"report: {paths['json']}\nplot: {paths['plot']}", soft_wrap=True)


def _tunable() -> tuple[str, ...]:
    from xdrec.tuning import tunable

    return tunable()


@app.command(cls=_declared_command(choices=("model",)))
def tune(
    ctx: typer.Context,
    model: Annotated[
        str,
        _choices(
            typer.Argument(help="What to tune: target-only, source-only or a strategy (mapping, bag, ...)."),
            _tunable,
            "model",
        ),
    ] = "target-only",
    trials: Annotated[
        int, typer.Option(help="Finished trials in all, counting those of an interrupted earlier run.")
    ] = 20,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds; no trial starts after it (the running one finishes).")
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="Maximum epochs per trial (early stopping on validation).")
    ] = 30,
    patience: PatienceOpt = 3,
    restart: Annotated[bool, typer.Option(help="Discard an earlier search instead of resuming it.")] = False,
    seed: SeedOpt = 42,
    device: DeviceOpt = "auto",
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Search a model's hyper-parameters on the VALIDATION split (never test); resumable.

    The best settings go to tuning/<dataset>/<model>.json; pretrain, transfer and run use them.

    An option given on their command line always wins over a tuned setting.
    """
    from xdrec.tuning import TuneConfig
    from xdrec.tuning import tune as search

    config = TuneConfig(
        trials=trials, timeout=timeout, epochs=epochs, patience=patience, seed=seed, device=device
    )
    result = search(
        _workspace(ctx), model, config, dataset=dataset, restart=restart, progress=not quiet and not as_json
    )
    if as_json:
        from dataclasses import asdict

        _print_json(asdict(result))
    else:
        from xdrec.views import tune_table

        console.print(tune_table(result))


@app.command()
def recommend(
    ctx: typer.Context,
    user_id: Annotated[
        str | None, typer.Argument(help="Raw user id (e.g. an Amazon reviewer id); or --users / --all.")
    ] = None,
    k: Annotated[int, typer.Option(help="How many items.")] = 10,
    strategy: Annotated[
        str | None,
        typer.Option(help="Model to use; default the best for the user's segment on the validation split."),
    ] = None,
    users: Annotated[
        Path | None,
        typer.Option(help="A file of raw user ids, one a line: recommend for each (needs --out)."),
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all", help="Recommend for every user of the dataset (needs --out).")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Parquet file for --users / --all: user, segment, model, rank, item, score."),
    ] = None,
    device: DeviceOpt = "auto",
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Top-K target items for one user (or many, to Parquet), from their whole history, excluding items
    they already have."""
    from dataclasses import asdict

    if (user_id is not None) + (users is not None) + all_users != 1:
        raise OptionError("give one user id, or --users FILE, or --all")
    if user_id is None:
        _recommend_batch(ctx, users, k, strategy, out, device, dataset, as_json, quiet)
        return
    from xdrec.pipeline import recommend as recommend_items

    rec = recommend_items(
        _workspace(ctx), user_id, k=k, strategy=strategy, dataset=dataset, device=device, strict=strict
    )
    if as_json:
        _print_json(asdict(rec))
    else:
        from xdrec.views import absent_lines, recommend_table

        console.print(recommend_table(rec))
        for line in absent_lines(rec.absent, "not available"):
            console.print(line, soft_wrap=True, highlight=False)


def _recommend_batch(
    ctx: typer.Context,
    users: Path | None,
    k: int,
    strategy: str | None,
    out: Path | None,
    device: str,
    dataset: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """`recommend --users FILE` / `--all`: every user's items into one Parquet file, written atomically."""
    if out is None:
        raise OptionError("--users and --all write a Parquet file: pass --out FILE.parquet")
    import polars as pl

    from xdrec.pipeline import recommend_many
    from xdrec.workspace import atomic_path

    ids = None
    if users is not None:
        try:
            ids = [line.strip() for line in users.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise OptionError(f"cannot read --users {users}: {e}") from None
        if not ids:
            raise OptionError(f"--users {users} holds no user id")
    frame = recommend_many(
        _workspace(ctx), ids, k=k, strategy=strategy, dataset=dataset, device=device,
        progress=not quiet and not as_json,
    )  # fmt: skip
    with atomic_path(out) as tmp:
        frame.write_parquet(tmp)
    summary = {
        "path": str(out),
        "users": frame["user"].n_unique(),
        "rows": frame.height,
        "models": dict(sorted(frame.group_by("model").agg(n=pl.col("user").n_unique()).iter_rows())),
    }
    if as_json:
        _print_json(summary)
    else:
        by_model = ", ".join(f"{m}: {n:,}" for m, n in summary["models"].items())
        console.print(
            f"{summary['users']:,} users, {summary['rows']:,} recommendations ({by_model}) -> {out}",
            soft_wrap=True,
        )


@app.command(cls=_declared_command(strategy_options=True, choices=("split", "loss", "lr_scaling")))
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
    min_user: MinUserOpt = 5,
    min_item: MinItemOpt = 5,
    split: SplitOpt = "loo",
    cold_start: ColdStartOpt = 0.2,
    min_per_domain: MinPerDomainOpt = 0,
    one_pass: OnePassOpt = False,
    t1: T1Opt = None,
    t2: T2Opt = None,
    strategy: StrategyOpt = ["default"],  # noqa: B006
    reverse: Annotated[
        bool,
        typer.Option(help="Also train every strategy into the source domain (models/<strategy>-reverse/)."),
    ] = False,
    device: DeviceOpt = "auto",
    epochs: EpochsOpt = 50,
    loss: LossOpt = "auto",
    batch_size: BatchOpt = 128,
    lr: LrOpt = 1e-3,
    weight_decay: WeightDecayOpt = 0.0,
    patience: PatienceOpt = 5,
    lr_scaling: LrScalingOpt = "none",
    in_batch: InBatchOpt = True,
    refit: RefitOpt = True,
    hidden: HiddenOpt = None,
    blocks: BlocksOpt = None,
    heads: HeadsOpt = None,
    dropout: DropoutOpt = None,
    max_len: MaxLenOpt = None,
    compile_model: CompileOpt = False,
    k: KOpt = [10],  # noqa: B006
    negatives: NegativesOpt = None,
    keep_seen: KeepSeenOpt = False,
    by_history: ByHistoryOpt = False,
    bootstrap: BootstrapOpt = 1000,
    seed: SeedOpt = 42,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """fetch, prepare, overlap, pretrain, embed, transfer and evaluate in one go (unchanged stages reused).

    Every option of those stages is here; --seed seeds them all.
    """
    from xdrec.pipeline import RunConfig
    from xdrec.pipeline import run as run_pipeline
    from xdrec.report import reports_to_json
    from xdrec.strategies import parse_strategies

    parse_strategies(strategy)  # an unknown name fails here, before any stage runs
    config = RunConfig(
        prepare=_prepare_config(
            min_user, min_item, split, cold_start, seed, one_pass, t1, t2, min_per_domain
        ),
        train=_train_config(
            epochs,
            batch_size,
            lr,
            weight_decay,
            patience,
            loss,
            seed,
            device,
            lr_scaling,
            in_batch,
            compile_model,
            refit,
        ),
        model=_model_options(hidden, blocks, heads, dropout, max_len),
        strategies=tuple(strategy),  # resolved for the dataset's split by `run`
        strategy_options=_strategy_options(ctx),
        evaluate=_evaluate_config(k, negatives, keep_seen, seed, bootstrap, device, by_history),
        reverse=reverse,
        tuned=True,
        keep=_given(ctx),
    )
    results = run_pipeline(
        _workspace(ctx),
        source,
        target,
        config,
        fetch_source=from_source,
        progress=not quiet and not as_json,
        log=_stage_log(as_json),
    )
    if as_json:  # the full-ranking report(s), then the sampled one(s) when asked for
        _print_json(reports_to_json([report for report, _ in results]) | _world_size())
    else:
        _print_reports(results)


def _warn(counts: dict) -> None:
    from xdrec.views import dataset_warnings

    for warning in dataset_warnings(counts):
        stderr.print(f"warning: {warning}", highlight=False, soft_wrap=True)


def _stage_log(quiet: bool):
    """Stage lines of run/demo go to stderr, so stdout stays the table or the JSON."""
    return (
        (lambda _: None)
        if quiet
        else (lambda line: stderr.print(f"› {line}", highlight=False, soft_wrap=True))
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
    """The whole pipeline on the embedded SYNTHETIC two-domain data (under a minute on 2 CPU cores).

    Runs in --workspace if given, else in xdrec-demo-<user> in the system's temporary folder, which the
    next demo reuses (one folder, never one more per run).
    """
    from dataclasses import replace

    from xdrec.data.synthetic import SyntheticConfig
    from xdrec.pipeline import DEMO_TRAIN
    from xdrec.pipeline import demo as run_demo
    from xdrec.report import reports_to_json

    workspace, results = run_demo(
        _demo_workspace(ctx),
        synthetic=SyntheticConfig(n_users=users),
        train=replace(DEMO_TRAIN, epochs=epochs, device=device),
        progress=not quiet and not as_json,
        log=_stage_log(as_json),
    )
    if as_json:
        _print_json(reports_to_json([r for r, _ in results]) | {"workspace": str(workspace.root)})
    else:
        _print_reports(results)
        quoted = shlex.quote(str(workspace.root))
        console.print(
            f"workspace: {workspace.root}  (try: xdrec --workspace {quoted} overlap)", soft_wrap=True
        )


@app.command()
def status(
    ctx: typer.Context,
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,  # the tables are the result: accepted so that scripts can pass -q everywhere
) -> None:
    """What the workspace holds: datasets and their options, models (fresh, stale or missing, and the
    command that rebuilds each), user vectors, reports and tuning studies."""
    from xdrec.status import status as workspace_status

    found = workspace_status(_workspace(ctx), dataset)
    if as_json:
        _print_json(found.as_dict())
        return
    from xdrec.views import status_summary, status_tables

    console.print(status_summary(found), soft_wrap=True, highlight=False)
    console.print(f"workspace: {found.workspace}", soft_wrap=True, highlight=False)
    for part in status_tables(found):
        console.print(part, soft_wrap=isinstance(part, str), highlight=False)


@app.command()
def users(
    ctx: typer.Context,
    segment: Annotated[
        str | None,
        typer.Option(
            help="warm (history in both domains), cold (source history only), target-only, or held-out "
            "(the evaluation's cold-start users); default: every segment."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many users (in user-id order).")] = 10,
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,  # the list is the result: accepted so that scripts can pass -q everywhere
) -> None:
    """Raw user ids by segment, as `recommend` serves them: a user id to try is one command away."""
    from xdrec.status import users as list_users

    frame = list_users(_workspace(ctx), segment, limit=limit, dataset=dataset)
    if as_json:
        _print_json({"users": frame.to_dicts()})
    else:
        from xdrec.views import users_table

        console.print(users_table(frame, segment))


def main() -> None:
    # Idle OpenMP workers spin by default; on a busy machine (or one with few cores) that makes torch
    # several times slower than one thread. Set before torch is imported (the commands import it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("RANK", "0") != "0":  # `torchrun -m xdrec ...`: rank 0 alone prints
        console.quiet = stderr.quiet = True
    code = 0
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    except KeyboardInterrupt:  # while Typer builds the commands, before the error boundary exists
        code = 130
        _say_interrupted()
        sys.exit(code)
    except BaseException:
        code = 1
        raise
    finally:
        if "xdrec.distributed" in sys.modules:  # only imported (with torch) by commands that train
            sys.modules["xdrec.distributed"].exit_process(code, clean=code == 0)
