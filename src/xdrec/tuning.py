"""`xdrec tune`: a hyper-parameter search for one model, judged on the validation split only.

Each trial trains the model from scratch on the training split with settings Optuna's TPE sampler proposes,
and scores it by its best validation NDCG@10: the early-stopped metric `pretrain` and `transfer` record
(for `mapping`, its pseudo-cold hold-out of training users). The test split is never read, so the test
report stays an honest estimate of the chosen settings. Every trial reports each epoch's score to a
median pruner, which stops a trial whose validation score is below the median of earlier trials at the
same epoch. The first trial of a search is the model's defaults, so the stored settings are never worse
than the defaults on validation. A trial trains the same `Plan` that `pretrain` or `transfer` would fit,
but saves nothing: models/ is never touched. Only the forward direction is tuned (a `-reverse` model of
`transfer --domain SOURCE` uses no stored settings). One search per workspace at a time (the CLI holds
the tuning/ write lock).

The search space (`space`), each dimension declared with its option (xdrec.options): the training
settings (lr, weight_decay, batch_size, in `TrainConfig`) and the backbone's architecture (hidden,
blocks, heads, dropout, max_len, in its config) for the single-domain models; for a strategy, those of
them it `tunes` (`fusion` and `joint` build a new backbone, their defaults the source model's; `finetune`
copies the source model's blocks, so only dropout and max_len) and its own options declared with a space
(`mapping.loss`; `bag.dim`, `bag.dropout`, ...).

Files (tuning/<dataset>/ in the workspace):
    <model>.journal   the study, Optuna's JournalStorage (one append-only file, no database): an
                      interrupted search resumes where it stopped, and --trials N means N finished
                      trials in all, however many runs it took; a damaged one (a write cut off) is
                      cut back to the operations before the damage, the whole kept as .damaged
    <model>.json      the best finished trial's settings and score, rewritten after every trial;
                      `pretrain`, `transfer` and `run` use them unless an option overrides them
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from xdrec import options
from xdrec.data.dataset import Dataset
from xdrec.distributed import launched
from xdrec.errors import OptionError, XdrecError
from xdrec.fit import Plan, seeded, train_plan
from xdrec.models import build_backbone, default_config
from xdrec.options import Choice, Param
from xdrec.sequence_training import ndcg_validator, training_examples
from xdrec.strategies import STRATEGIES
from xdrec.strategies.base import TransferConfig
from xdrec.training import TrainConfig
from xdrec.tuned_settings import JOURNAL, Tuned, load_tuned, settings_path, with_params
from xdrec.validation import METRIC
from xdrec.workspace import Workspace, atomic_path, write_json

SINGLE_DOMAIN = ("source-only", "target-only")


def tunable() -> tuple[str, ...]:
    """What `tune` can search: the single-domain models and every registered strategy."""
    return (*SINGLE_DOMAIN, *STRATEGIES)


def space(model: str) -> dict[str, Choice]:
    """What `tune` searches for `model`, each dimension declared where its option is (xdrec.options): the
    backbone's architecture and the training's settings for a single-domain model; for a strategy, those
    of them it `tunes` and its own options ("<strategy>.<field>"). The names are the config fields they
    set, so a stored setting applies with no mapping table."""
    shared = options.space(default_config(1)) | options.space(TrainConfig)
    if model in SINGLE_DOMAIN:
        return shared
    strategy = STRATEGIES[model]
    own = {} if strategy.Options is None else options.space(strategy.Options, f"{model}.")
    return {name: shared[name] for name in strategy.tunes} | own


@dataclass(frozen=True)
class TuneConfig:
    """What stays fixed across the trials of one search (a resumed search must repeat it)."""

    trials: int = 20  # finished trials in all, counting those of earlier runs of the same search
    timeout: float | None = None  # seconds; no trial starts after it (a running one finishes)
    epochs: int = 30  # per trial, with early stopping on validation
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise OptionError(f"--trials must be at least 1, got {self.trials}")
        if self.timeout is not None and not 0 < self.timeout < float("inf"):
            raise OptionError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.epochs < 1 or self.patience < 1:
            raise OptionError("--epochs and --patience must be at least 1")

    def fixed(self) -> dict[str, Any]:
        """What a resumed search must repeat for its trials to be comparable."""
        return {"epochs": self.epochs, "patience": self.patience, "seed": self.seed}


@dataclass(frozen=True)
class Trial:
    number: int
    state: str  # complete | pruned | fail | running
    value: float | None  # best validation NDCG@10 of the trial
    params: dict[str, Param]
    epochs: int | None  # epochs trained (fewer when early-stopped or pruned)
    seconds: float | None


@dataclass(frozen=True)
class TuneResult:
    model: str
    dataset: str
    study: Path  # the journal
    settings: Path  # where the best settings are stored
    best: Tuned | None  # None when no trial finished
    trials: list[Trial]  # every trial of the study, this run's and earlier ones
    ran: int  # trials started by this run
    seconds: float


def study_path(workspace: Workspace, dataset: str, model: str) -> Path:
    return workspace.tuning_dir(dataset) / f"{model}{JOURNAL}"


def tune(
    workspace: Workspace,
    model: str = "target-only",
    config: TuneConfig = TuneConfig(),
    *,
    dataset: str | None = None,
    restart: bool = False,
    progress: bool = True,
) -> TuneResult:
    """Search `model`'s hyper-parameters on `dataset` (default: the current one) for `config.trials`
    finished trials in all (module docstring); store and return the best settings.

    restart: discard an earlier search of this model on this dataset instead of resuming it.
    """
    if model not in tunable():
        raise XdrecError(f"cannot tune {model!r}: choose from {', '.join(tunable())}")
    if launched().distributed:  # every rank would run its own study in the one journal
        raise XdrecError("tune runs in one process: start it without torchrun")
    started = time.perf_counter()
    data = Dataset.from_workspace(workspace, dataset)
    objective, base = _objective(workspace, data, model, config)  # checks what the model needs first
    journal = study_path(workspace, data.name, model)
    if restart:
        journal.unlink(missing_ok=True)
        settings_path(workspace, data.name, model).unlink(missing_ok=True)
    study = _open_study(journal, model, data, config, defaults(model, base))
    finished = sum(t.state in (_COMPLETE, _PRUNED) for t in study.trials)
    remaining = max(0, config.trials - finished)

    console = Console(stderr=True, quiet=not progress)
    if finished:
        console.log(f"resuming the search in {journal}: {finished} trial(s) finished")
    ran = 0
    with _progress_bar(console, progress) as bar:
        task = bar.add_task(
            f"tune {model}", total=config.trials, completed=finished, best=_best_text(study), now=""
        )

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            nonlocal ran
            ran += 1
            if any(t.state == _COMPLETE for t in study.trials):
                _store(workspace, data, model, study)
            done = 1 if trial.state in (_COMPLETE, _PRUNED) else 0
            bar.update(task, advance=done, best=_best_text(study), now="")

        def show(trial: int, done: int, value: float | None) -> None:
            # The running trial's epoch, from its start on: a trial's first epoch can take a minute.
            running = f"trial {trial}: epoch {min(done + 1, config.epochs)}/{config.epochs}"
            last = "" if value is None else f", {METRIC} {value:.4f} after epoch {done}"
            bar.update(task, now=f"({running}{last})")

        if remaining:
            # A pruned trial ends early; a trial out of (GPU) memory fails and the search goes on; any
            # other error ends the search (the journal keeps every finished trial: the same command
            # resumes it).
            study.optimize(
                lambda trial: objective(trial, show),
                n_trials=remaining,
                timeout=config.timeout,
                catch=(torch.cuda.OutOfMemoryError,),
                callbacks=[after_trial],
                gc_after_trial=True,
            )
    if any(t.state == _COMPLETE for t in study.trials):
        _store(workspace, data, model, study)  # also when nothing ran: a deleted settings file comes back
    trials = [_trial(t) for t in study.trials]
    best = load_tuned(workspace, data, model)
    return TuneResult(
        model=model,
        dataset=data.name,
        study=journal,
        settings=settings_path(workspace, data.name, model),
        best=best,
        trials=trials,
        ran=ran,
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------- study

_COMPLETE, _PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
_WAITING = optuna.trial.TrialState.WAITING


def _open_study(
    journal: Path, model: str, data: Dataset, config: TuneConfig, first: Mapping[str, Param]
) -> optuna.Study:
    """The search in `journal`, created or resumed; refuses one made on another dataset or budget."""
    # Our progress display and error line say what matters; Optuna would log a traceback for every
    # failed trial, a Ctrl-C included.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    journal.parent.mkdir(parents=True, exist_ok=True)
    _keep_whole_operations(journal)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        existing = optuna.load_study(study_name=model, storage=storage) if journal.stat().st_size else None
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:  # whole lines, foreign ops
        raise XdrecError(
            f"cannot read the search in {journal} ({type(e).__name__}: {str(e)[:120]}): pass --restart to "
            "start a new one"
        ) from None
    retry_defaults = False
    if existing is not None:
        attrs = existing.user_attrs
        if attrs.get("manifest_hash") != data.manifest_hash:
            raise XdrecError(
                f"the search in {journal} was run on another version of dataset {data.name}: "
                "pass --restart to start a new one"
            )
        if attrs.get("fixed") != config.fixed():
            options = " ".join(f"--{k} {v}" for k, v in attrs.get("fixed", {}).items())
            raise XdrecError(
                f"the search in {journal} trained its trials with {options}: repeat those options to "
                "resume it, or pass --restart"
            )
        # A trial still marked running was cut off with its process: it did not finish.
        for trial in existing.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            existing.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        # The defaults are the one enqueued trial: one cut off (a kill, Ctrl-C) is queued again.
        retry_defaults = not any(
            "fixed_params" in t.system_attrs and t.state in (_COMPLETE, _PRUNED, _WAITING)
            for t in existing.get_trials(deepcopy=False)
        )
    # Seeded by the trials so far, so a resumed search does not propose the same settings again.
    sampler = optuna.samplers.TPESampler(seed=config.seed + len(existing.trials if existing else []))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    study = optuna.create_study(
        storage=storage,
        study_name=model,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if existing is None:
        study.set_user_attr("manifest_hash", data.manifest_hash)
        study.set_user_attr("fixed", config.fixed())
    if existing is None or retry_defaults:
        # The first trial is the defaults, so the search can only keep them or find better.
        study.enqueue_trial(dict(first))
    return study


def _keep_whole_operations(journal: Path) -> None:
    """Cut a damaged journal (a write cut off by a kill or a full disk, a line garbled) back to the
    operations before the first damaged line, so the trials finished before it are kept; the whole file
    is kept beside it as <journal>.damaged. Later lines are dropped too: each operation names its trial
    by the order of those before it."""
    data = journal.read_bytes() if journal.exists() else b""
    whole = lines = 0
    for line in data.splitlines(keepends=True):
        try:
            operation = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:  # not JSON, or not UTF-8
            operation = None
        if not isinstance(operation, dict) or "op_code" not in operation:
            break
        whole, lines = whole + len(line), lines + 1
    if whole == len(data):
        return
    damaged = journal.with_name(journal.name + ".damaged")
    with atomic_path(damaged) as tmp:
        tmp.write_bytes(data)
    with atomic_path(journal) as tmp:
        tmp.write_bytes(data[:whole])
    Console(stderr=True).print(
        f"note: {journal} was damaged at line {lines + 1} (a write cut off?): the search resumes from the "
        f"trials finished before it; the damaged file is kept as {damaged}",
        highlight=False,
        soft_wrap=True,
    )


def defaults(model: str, architecture: Mapping[str, Param] | None = None) -> dict[str, Param]:
    """The settings `model` gets without tuning or options, those of its space that the space holds:
    training defaults (a weight decay of 0 as the space's smallest), `architecture` (default: the
    backbone's defaults; a strategy's is its source model's), a strategy's own defaults."""
    values: dict[str, Any] = asdict(TrainConfig()) | dict(architecture or asdict(default_config(1)))
    own = STRATEGIES[model].Options if model in STRATEGIES else None
    if own is not None:
        values |= {f"{model}.{k}": v for k, v in asdict(own()).items()}
    searched = space(model)
    smallest = options.space(TrainConfig)["weight_decay"].low
    values["weight_decay"] = max(float(values["weight_decay"]), smallest)
    return {name: values[name] for name, choice in searched.items() if choice.holds(values[name])}


def check_settings(model: str, params: object, path: Path) -> None:
    """Refuse stored settings that no search of `model` could have chosen (a settings file edited by
    hand, or by another xdrec version): one line naming the file, not a traceback in training or an
    option error blaming the command line."""
    searched = space(model) if model in tunable() else {}
    problems = (
        ["its params are not an object"]
        if not isinstance(params, dict)
        else [
            f"{name!r} is not a setting `xdrec tune {model}` searches"
            if name not in searched
            else f"{name} = {json.dumps(value)} is not {searched[name]}"
            for name, value in params.items()
            if name not in searched or not searched[name].holds(value)
        ]
    )
    if problems:
        raise XdrecError(
            f"{path}: {problems[0]}: run `xdrec tune {model} --restart` to choose the settings again, or "
            "delete the file"
        )


def _store(workspace: Workspace, data: Dataset, model: str, study: optuna.Study) -> None:
    best = study.best_trial
    tuned = Tuned(
        model=model,
        dataset=data.name,
        manifest_hash=data.manifest_hash,
        metric=METRIC,
        value=float(best.value),  # type: ignore[arg-type]
        trial=best.number,
        trials=sum(t.state in (_COMPLETE, _PRUNED) for t in study.trials),
        params=dict(best.params),
    )
    write_json(settings_path(workspace, data.name, model), asdict(tuned))


def _trial(t: optuna.trial.FrozenTrial) -> Trial:
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
    return Trial(
        number=t.number,
        state=t.state.name.lower(),
        value=t.value,
        params=dict(t.params),
        epochs=t.user_attrs.get("epochs"),
        seconds=None if seconds is None else round(seconds, 1),
    )


def _best_text(study: optuna.Study) -> str:
    done = [t for t in study.trials if t.state == _COMPLETE]
    return f"{METRIC} {max(t.value for t in done):.4f}" if done else ""  # type: ignore[type-var]


def _progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials  best {task.fields[best]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[now]}"),
        console=console,
        disable=not enabled,
    )


# ---------------------------------------------------------------------------------------------- trials

# (trial, epochs done, last validation score or None) for the progress display
Show = Callable[[int, int, float | None], None]
Objective = Callable[[optuna.Trial, Show], float]
# What to train for a trial's settings: the same `Plan` that `pretrain` / `transfer` would fit.
Planner = Callable[[Mapping[str, Param], TrainConfig], tuple[Plan, TrainConfig]]


def _objective(
    workspace: Workspace, data: Dataset, model: str, config: TuneConfig
) -> tuple[Objective, dict[str, Param]]:
    """A trial: sample the model's space, train its plan on train (nothing saved), return its best
    validation score; every epoch's score goes to the pruner. Also the architecture the model gets
    without options (the backbone's defaults, or the source model's for a strategy)."""
    searched = space(model)
    train_fixed = TrainConfig(
        epochs=config.epochs,
        patience=config.patience,
        seed=config.seed,
        device=config.device,
        threads=config.threads,
    )
    if model in ("source-only", "target-only"):
        planner = _backbone_planner(data, data.source if model == "source-only" else data.target)
        base: dict[str, Param] = asdict(default_config(1))  # type: ignore[call-overload]
    else:
        planner, base = _strategy_planner(workspace, data, model, train_fixed)

    def objective(trial: optuna.Trial, show: Show) -> float:
        params = {name: choice.suggest(trial, name) for name, choice in searched.items()}
        # Seeded and trained as `fit` does, but saved nowhere.
        plan, train_config = seeded(
            lambda: planner(params, with_params(train_fixed, params)), train_fixed.seed
        )

        def report(line: dict[str, Any]) -> None:
            trial.set_user_attr("epochs", line["epoch"])
            if line.get(METRIC) is not None:
                show(trial.number, line["epoch"], line[METRIC])
                trial.report(line[METRIC], line["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned()

        show(trial.number, 0, None)
        result = train_plan(plan, train_config, progress=False, on_epoch=report)
        if result.best_metric is None or math.isnan(result.best_metric):
            raise XdrecError(f"trial {trial.number} had no validation score: the dataset has no valid split")
        return result.best_metric

    return objective, base


def _backbone_planner(data: Dataset, domain: str) -> Planner:
    sequences = data.train_sequences(domain)
    validate = ndcg_validator(data, domain)
    if validate is None:
        raise XdrecError(f"{domain} has no validation users in {data.name}: nothing to tune on")
    counts = data.item_counts(domain)

    def plan(params: Mapping[str, Param], train_config: TrainConfig) -> tuple[Plan, TrainConfig]:
        cfg = with_params(default_config(data.n_items(domain)), params)
        examples = training_examples(sequences, cfg.max_len)
        net = build_backbone(cfg)
        return Plan(net, examples, validate, item_counts=counts), train_config  # type: ignore[arg-type]

    return plan


def _strategy_planner(
    workspace: Workspace, data: Dataset, model: str, train_fixed: TrainConfig
) -> tuple[Planner, dict[str, Param]]:
    from xdrec.strategies import strategy_inputs

    strategy = STRATEGIES[model]
    ctx, inputs = strategy_inputs(workspace, data, strategy, TransferConfig(train=train_fixed))

    def plan(params: Mapping[str, Param], train_config: TrainConfig) -> tuple[Plan, TrainConfig]:
        # Architecture params land in TransferConfig.model (options over the source model's architecture),
        # "<strategy>.<field>" in its options; the strategy may adjust its training (bag: weight decay).
        config = strategy.with_params(TransferConfig(train=train_config), params)
        return strategy.build(ctx, config, inputs), strategy.train_config(config)

    return plan, asdict(ctx.source.model.cfg)  # type: ignore[call-overload]
